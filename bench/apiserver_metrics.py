"""What the bench reads from the API server's /metrics: watches, long-running requests and
request counts, and the differences between two readings that every mode reports."""

from __future__ import annotations


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(value for key, value in metrics.items() if key.startswith(prefix))


def watch_count(metrics: dict[str, float]) -> float:
    return metric_sum(metrics, "apiserver_registered_watchers:")


def long_running_count(metrics: dict[str, float]) -> float:
    return metric_sum(metrics, "apiserver_longrunning_gauge:") + metric_sum(
        metrics, "apiserver_longrunning_requests:"
    )


def request_counts(metrics: dict[str, float]) -> dict[str, float]:
    return {
        key.split(":", 1)[1]: value
        for key, value in metrics.items()
        if key.startswith("apiserver_request_total:")
    }


def raise_peaks(peak: dict[str, float], sample: dict[str, float], before: dict[str, float]) -> None:
    """Raise `peak`'s watches and long-running requests to those `sample` adds to `before`."""
    peak["watches"] = max(peak["watches"], watch_count(sample) - watch_count(before))
    peak["long_running"] = max(
        peak["long_running"], long_running_count(sample) - long_running_count(before)
    )


def requests_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The API server's requests (by verb, resource and code) made between two readings."""
    earlier = request_counts(before)
    return {
        key: value - earlier.get(key, 0.0)
        for key, value in request_counts(after).items()
        if value - earlier.get(key, 0.0) > 0
    }
