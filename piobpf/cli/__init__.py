"""Front ends: the command line (options into a typed config), and the
modes it runs: a printed trace, --live, --prometheus, --from-perf and
--compare. The top layer: nothing imports it but __main__."""
