"""Prometheus metrics of the server, through prometheus_client, in a
registry of its own (several servers in one process do not mix):

    vfpga_requests_total{model,outcome}      outcome: ok | failed | rejected
    vfpga_request_seconds{model}             histogram, server-side: request checked -> result ready
    vfpga_queue_depth{model}                 requests waiting in the tenant's host queue
    vfpga_cores{model}                       cores the tenant holds
    vfpga_device_utilisation{model,source}   busy core-cycles / (request cycles x cores held)
    vfpga_device_latency_seconds{model,source}  device latency per request, mean of the recent window
    vfpga_models                             models loaded

``source`` says whether the device figures are modeled (emulation) or
measured (a board's counters), as in ``Accelerator.stats``. In front of a
cluster, per board too:

    vfpga_board_up{board,kind}               1 serving, 0 down
    vfpga_board_cores{board,kind,state}      CNN cores: used | free
    vfpga_board_replicas{board}              replicas it holds
    vfpga_board_outstanding{board}           requests routed to its replicas, not answered
    vfpga_board_requests_total{board}        requests its replicas answered OK
    vfpga_board_clock_seconds{board,source}  the board's clock (modeled on emulated boards)
    vfpga_board_downs_total{board}           times it was found down (failovers)
    vfpga_replicas{model}                    replicas of the model
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
OUTCOMES = ("ok", "failed", "rejected")


class _Board:
    """Collects the gauges from the accelerator at scrape time."""

    def __init__(self, repo):
        self.repo = repo

    def collect(self):
        depth = GaugeMetricFamily("vfpga_queue_depth", "requests waiting in the tenant's host queue", labels=["model"])
        cores = GaugeMetricFamily("vfpga_cores", "cores the tenant holds", labels=["model"])
        util = GaugeMetricFamily("vfpga_device_utilisation", "busy core-cycles over request cycles times cores held",
                                 labels=["model", "source"])
        lat = GaugeMetricFamily("vfpga_device_latency_seconds", "device latency per request (recent mean)",
                                labels=["model", "source"])
        served = dict(self.repo.models)
        try:
            stats = self.repo.accel.stats()
        except Exception:  # noqa: BLE001 - a closing board: no device figures in this scrape
            stats = {}
        for name, s in sorted(served.items()):
            depth.add_metric([name], s.tenant.pending)
            cores.add_metric([name], len(s.tenant.cores))
            st = stats.get(name)
            if st is not None and st.utilisation is not None:
                util.add_metric([name, st.source], st.utilisation)
            if st is not None and st.latency_ms is not None:
                lat.add_metric([name, st.source], st.latency_ms / 1e3)
        models = GaugeMetricFamily("vfpga_models", "models loaded")
        models.add_metric([], len(served))
        return [depth, cores, util, lat, models]


class _Cluster:
    """Collects the boards' figures of a cluster at scrape time."""

    def __init__(self, repo):
        self.repo = repo

    def collect(self):
        up = GaugeMetricFamily("vfpga_board_up", "1 if the board serves, 0 if it is down", labels=["board", "kind"])
        cores = GaugeMetricFamily("vfpga_board_cores", "CNN cores of the board", labels=["board", "kind", "state"])
        reps = GaugeMetricFamily("vfpga_board_replicas", "replicas the board holds", labels=["board"])
        out = GaugeMetricFamily("vfpga_board_outstanding", "requests routed to the board's replicas, not answered",
                                labels=["board"])
        served = CounterMetricFamily("vfpga_board_requests", "requests the board answered OK", labels=["board"])
        clock = GaugeMetricFamily("vfpga_board_clock_seconds", "the board's clock", labels=["board", "source"])
        downs = CounterMetricFamily("vfpga_board_downs", "times the board was found down", labels=["board"])
        replicas = GaugeMetricFamily("vfpga_replicas", "replicas of the model", labels=["model"])
        try:
            boards = self.repo.accel.boards()
        except Exception:  # noqa: BLE001 - a closing cluster: no board figures in this scrape
            boards = []
        for b in boards:
            i = str(b.index)
            up.add_metric([i, b.kind], 1 if b.up else 0)
            total, free = b.cores.get("cnn", 0), b.free.get("cnn", 0)
            cores.add_metric([i, b.kind, "used"], total - free)
            cores.add_metric([i, b.kind, "free"], free)
            reps.add_metric([i], len(b.replicas))
            out.add_metric([i], b.outstanding)
            served.add_metric([i], b.requests)
            if b.clock_s is not None:
                clock.add_metric([i, b.source], b.clock_s)
            downs.add_metric([i], b.downs)
        for name, s in sorted(dict(self.repo.models).items()):
            replicas.add_metric([name], len(s.tenant.placement))
        return [up, cores, reps, out, served, clock, downs, replicas]


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vfpga_requests", "inference requests by outcome", ["model", "outcome"],
                                registry=self.registry)
        self.latency = Histogram("vfpga_request_seconds", "server-side inference latency", ["model"],
                                 buckets=BUCKETS, registry=self.registry)

    def watch(self, repo) -> None:
        """Adds the board's gauges (read from ``repo`` at every scrape), and the boards' of a cluster."""
        self.registry.register(_Board(repo))
        if repo.config.cluster:
            self.registry.register(_Cluster(repo))

    def loaded(self, model: str) -> None:
        for o in OUTCOMES:  # the series exist (at 0) from the load on
            self.requests.labels(model, o)
        self.latency.labels(model)

    def unloaded(self, model: str) -> None:
        for o in OUTCOMES:
            try:
                self.requests.remove(model, o)
            except KeyError:
                pass
        try:
            self.latency.remove(model)
        except KeyError:
            pass

    def request(self, model: str, outcome: str, seconds: float) -> None:
        self.requests.labels(model, outcome).inc()
        if outcome == "ok":
            self.latency.labels(model).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
