"""What request validation costs: protovalidate (CEL, interpreted) against the compiled
fast validator, on a gateway SubmitAlertsRequest of kube-state-metrics alerts, with 1 and
with 50 alerts, in one run.

    .venv/bin/python -m bench.validation [--seconds 2]

Prints the time per validation of both (median of repeated runs), per alert, and their
ratio. Compare ratios, not absolute numbers: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import protovalidate
from google.protobuf.message import Message
from kubernaut.common.v1 import alert_pb2
from kubernaut.gateway.v1 import gateway_pb2

from kubernaut.runtime import validation

BATCH_SIZES = (1, 50)


def kube_state_metrics_alert(index: int) -> alert_pb2.Alert:
    """A firing KubePodCrashLooping as AlertManager sends it for kube-state-metrics."""
    pod = f"checkout-7d9f8b6c5-{index:05d}"
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={
            "alertname": "KubePodCrashLooping",
            "namespace": "shop",
            "pod": pod,
            "container": "checkout",
            "severity": "warning",
            "job": "kube-state-metrics",
            "instance": "10.42.0.17:8080",
        },
        annotations={
            "summary": "Pod is crash looping.",
            "description": (
                f"Pod shop/{pod} (checkout) is in waiting state (reason: CrashLoopBackOff)."
            ),
        },
        generator_url="http://prometheus:9090/graph?g0.expr=kube_pod_container_status_waiting",
        source_fingerprint=f"{index:016x}",
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    alert.starts_at.seconds = 1_767_225_600 + index
    return alert


def submit_alerts_request(size: int) -> gateway_pb2.SubmitAlertsRequest:
    return gateway_pb2.SubmitAlertsRequest(
        alerts=[kube_state_metrics_alert(index) for index in range(size)]
    )


def protovalidate_validation(message: Message) -> object:
    return protovalidate.collect_violations(message)


def seconds_per_call(
    validate: Callable[[Message], object], message: Message, budget: float
) -> float:
    """The median time of one call, over as many calls as fit the budget (at least 5)."""
    validate(message)  # compile and warm caches first
    timings: list[float] = []
    deadline = time.perf_counter() + budget
    while len(timings) < 5 or time.perf_counter() < deadline:
        started = time.perf_counter()
        validate(message)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main(budget: float) -> None:
    print("SubmitAlertsRequest of kube-state-metrics alerts (7 labels, 2 annotations each)")
    print(f"{'alerts':>6} {'protovalidate':>15} {'fast':>12} {'ratio':>8} {'fast/alert':>12}")
    for size in BATCH_SIZES:
        request = submit_alerts_request(size)
        assert validation.violations_of(request) == validation.protovalidate_violations(request)
        assert validation.violations_of(request) == [], "the bench request must be valid"
        slow = seconds_per_call(protovalidate_validation, request, budget)
        fast = seconds_per_call(validation.violations_of, request, budget)
        print(
            f"{size:>6} {slow * 1000:>12.3f} ms {fast * 1000:>9.3f} ms {slow / fast:>7.0f}x"
            f" {fast / size * 1e6:>9.1f} µs"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time budget of each measurement"
    )
    args = parser.parse_args()
    main(args.seconds)
