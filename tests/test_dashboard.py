"""deploy/grafana-dashboard.json and deploy/piobpf-rules.yml, against a real
Prometheus that scrapes real piobpf exporters tracing real guests: every
panel's query and every variable returns data, and the alerts fire where
they should (promtool's rule tests for the 1-day baseline, which no test can
wait for; a real full map for the dropped events).
"""

import json
import math
import re
import subprocess
import time
import urllib.parse

from helpers import REPO, HeldGuest, needs_tracing
from test_prometheus import Exporter, get, prometheus, running, wait_for  # noqa: F401

DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
RULES = REPO / "deploy" / "piobpf-rules.yml"
# The dashboard's variables as Grafana fills them with "All"; $__rate_interval
# 10 s: several of these 1 s scrapes, over the guest's few seconds of exits.
VARIABLES = {"$job": "piobpf", "$instance": ".*", "$vm": ".*", "$__rate_interval": "10s"}


def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def fill(expr):
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def panel_queries():
    """[(panel title, expr)] of every panel's targets."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_promtool_check_rules():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS: 5 rules found" in out.stdout, out.stdout + out.stderr


RULE_TESTS = """\
rule_files: ["{rules}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 100 exits/s for a day, then 20000/s from 1500m on.
      - series: 'piobpf_pio_events_total{{job="piobpf",instance="kvm1:9435",direction="read",port="0x3fd",device="serial",vm="web1",pid="7"}}'
        values: '0+6000x1500 9000000+1200000x60'
      # 20000/s all along: its baseline is as high.
      - series: 'piobpf_pio_events_total{{job="piobpf",instance="kvm1:9435",direction="read",port="0x60",device="keyboard",vm="web1",pid="7"}}'
        values: '0+1200000x1560'
      # 5/s then 500/s: 100 times its baseline, but under the 1000/s floor.
      - series: 'piobpf_pio_events_total{{job="piobpf",instance="kvm1:9435",direction="write",port="0x80",device="dma page reg",vm="db2",pid="9"}}'
        values: '0+300x1500 450000+30000x60'
      - series: 'piobpf_dropped_events_total{{job="piobpf",instance="kvm1:9435"}}'
        values: '0x1520 7x39'
    alert_rule_test:
      - eval_time: 1499m
        alertname: PiobpfExitsAboveBaseline
        exp_alerts: []
      - eval_time: 1530m
        alertname: PiobpfExitsAboveBaseline
        exp_alerts:
          - exp_labels:
              severity: warning
              job: piobpf
              instance: "kvm1:9435"
              direction: read
              port: "0x3fd"
              device: serial
              vm: web1
            exp_annotations:
              summary: "read 0x3fd (serial) of VM web1 on kvm1:9435 exits 20k/s, over 10 times its baseline"
              description: "Its mean over the day before, last hour left out, is under a tenth of that. Which device model and guest driver: piobpf --live --by vm on the host."
      - eval_time: 1519m
        alertname: PiobpfDroppedEvents
        exp_alerts: []
      - eval_time: 1522m
        alertname: PiobpfDroppedEvents
        exp_alerts:
          - exp_labels:
              severity: warning
              job: piobpf
              instance: "kvm1:9435"
            exp_annotations:
              summary: "piobpf on kvm1:9435 dropped events: its kernel map is full"
              description: "7 kvm:kvm_pio events in 10 minutes were counted in no key. Raise --map-size (PIOBPF_OPTS in /etc/default/piobpf-exporter)."
"""


def test_alerts_fire_on_a_surge_over_the_baseline_and_on_drops_only(tmp_path):
    tests = tmp_path / "rules-test.yml"
    tests.write_text(RULE_TESTS.format(rules=RULES))
    out = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def api(url, path, **params):
    answer = json.loads(get(f"{url}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)))
    assert answer["status"] == "success", answer
    return answer["data"]


def values(result):
    """The numbers of an instant query's result (vector or table)."""
    return [float(r["value"][1]) for r in result["result"]]


@needs_tracing
def test_every_dashboard_query_returns_data(running, prometheus):  # noqa: F811
    # 0x3fd's exits each wait 200 us in the guest's VMM: some 4 s of exits,
    # timed by --latency, across several scrapes; and MMIO reads for --mmio's panel.
    busy = HeldGuest("r:0x3fd:1:20000", "w:0x3f8:1:100", "mr:0xfebc0000:4:500", name="dash-vm",
                     args=["--delay", "0x3fd:200"])
    # Four ports into a map of two keys: events dropped, for real.
    full = HeldGuest("w:0x80:1:10", "w:0x70:1:10", "r:0x71:1:10", "r:0x61:1:10", name="full-vm")
    running += [busy.proc, full.proc]
    exporter = Exporter(running, "--by", "vm", "--latency", "--mmio", "-p", str(busy.pid))
    dropping = Exporter(running, "--by", "vm", "--map-size", "2", "-p", str(full.pid))
    url = prometheus(exporter.target, dropping.target, rules=[RULES])
    # Both scraped once before any event: increase() sees the drops from 0
    # (with --mmio, a series per reason).
    both = 'count(count by (instance) (piobpf_dropped_events_total{job="piobpf"} == 0))'
    wait_for("a first scrape of both", lambda: values(api(url, "query", query=both)) == [2])
    for g in (busy, full):
        g.start()
    for g in (busy, full):
        g.wait_done()
    # Every panel at one moment whose windows hold the guests' runs: once the
    # recording rule was evaluated after a scrape that followed the runs.
    done = time.time()
    wait_for("the recording rule evaluated after the runs", lambda: api(
        url, "query", query=f"timestamp(piobpf:pio_events:rate5m) > {done + 1.5}")["result"])
    # A rate needs two samples of a series: the MMIO one appears only with
    # the guest's MMIO reads, at the end of its run (late on a busy host).
    wait_for("two scrapes of the MMIO series", lambda: api(url, "query", query=(
        'count_over_time(piobpf_mmio_events_total{job="piobpf"}[5m]) >= 2'))["result"])
    at = time.time()
    empty = {}
    for title, expr in panel_queries():
        got = values(api(url, "query", query=fill(expr), time=at))
        if not any(math.isfinite(v) for v in got):
            empty[title] = got
    assert empty == {}

    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        names = api(url, f"label/{m.group(2)}/values", **{"match[]": fill(m.group(1))})
        assert names, var["name"]
        if var["name"] == "vm":
            assert set(names) == {"dash-vm", "full-vm"}

    # The dropped events fire their alert, for that exporter only.
    def firing():
        alerts = api(url, "alerts")["alerts"]
        return [a for a in alerts if a["state"] == "firing"] or None
    alerts = wait_for("a firing alert", firing)
    assert [(a["labels"]["alertname"], a["labels"]["instance"]) for a in alerts] == \
        [("PiobpfDroppedEvents", dropping.target)]
    for e, g in ((exporter, busy), (dropping, full)):
        g.end()
        assert e.stop()[0] == 0
