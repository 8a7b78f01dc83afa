"""The package list, found rather than kept by hand (the rest is in setup.cfg).

piobpf and all its sub-packages, plus piobpf.bpf: the BPF C source kept at
bpf/ (setup.cfg's package_dir). setup.cfg's `find_namespace:` cannot add a
package found elsewhere, hence this file."""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["piobpf", "piobpf.*"],
                                       exclude=["*.__pycache__"]) + ["piobpf.bpf"])
