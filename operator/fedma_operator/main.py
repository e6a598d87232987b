"""``fedma-operator``: run the operator (kopf) with ``/metrics`` and a liveness endpoint."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import kopf

from fedma import package_version
from fedma_operator.handlers import OperatorConfig, build_registry
from fedma_operator.jobs import JobSettings
from fedma_operator.kube import DEFAULT_TIMEOUT_S
from fedma_operator.metrics import serve
from fedma_operator.tenancy import Tenancy


def _env(name: str, default: object) -> str:
    return os.environ.get(name, str(default))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every option says what it does and its default; each has an environment variable
    (the chart sets those), which the command line overrides."""
    p = argparse.ArgumentParser(prog="fedma-operator", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"fedma-operator {package_version()}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; if none given: "
                            "$FEDMA_NAMESPACE)")
    where.add_argument("--all-namespaces", action="store_true",
                       help="watch every namespace (needs the chart's cluster-wide RBAC)")
    p.add_argument("--metrics-port", type=int, default=int(_env("FEDMA_METRICS_PORT", 9090)),
                   help="port of /metrics (Prometheus; $FEDMA_METRICS_PORT)")
    p.add_argument("--health-port", type=int, default=int(_env("FEDMA_HEALTH_PORT", 8080)),
                   help="port of /healthz, the liveness probe ($FEDMA_HEALTH_PORT)")
    p.add_argument("--trainer-image", default=_env("FEDMA_TRAINER_IMAGE",
                                                   JobSettings.trainer_image),
                   help="image of the silo and aggregation Jobs ($FEDMA_TRAINER_IMAGE)")
    p.add_argument("--trainer-service-account",
                   default=_env("FEDMA_TRAINER_SERVICE_ACCOUNT", JobSettings.service_account),
                   help="ServiceAccount the Jobs run as ($FEDMA_TRAINER_SERVICE_ACCOUNT)")
    p.add_argument("--trainer-metrics-port", type=int,
                   default=int(_env("FEDMA_TRAINER_METRICS_PORT", JobSettings.metrics_port)),
                   help="port of the trainer pods' live metrics, 0: off "
                        "($FEDMA_TRAINER_METRICS_PORT)")
    p.add_argument("--interval", type=float, default=float(_env("FEDMA_INTERVAL", 10)),
                   help="seconds between reconciles of one object ($FEDMA_INTERVAL)")
    p.add_argument("--silo-cluster-grace", type=float,
                   default=float(_env("FEDMA_SILO_CLUSTER_GRACE", 60)),
                   help="seconds a silo's own cluster may be unreachable before its attempt "
                        "counts as failed ($FEDMA_SILO_CLUSTER_GRACE)")
    p.add_argument("--api-timeout", type=float,
                   default=float(_env("FEDMA_API_TIMEOUT", DEFAULT_TIMEOUT_S)),
                   help="seconds one API call (hub or silo cluster) may take before it counts "
                        "as unanswered ($FEDMA_API_TIMEOUT)")
    p.add_argument("--job-ttl", type=int,
                   default=int(_env("FEDMA_JOB_TTL", JobSettings.ttl_after_finished_s or 0)),
                   help="seconds a finished Job is kept (ttlSecondsAfterFinished), 0: kept "
                        "until its round is deleted ($FEDMA_JOB_TTL)")
    p.add_argument("--silo-namespace", action="append", default=[],
                   help="a hub namespace, besides the object's own, where silo Jobs may run "
                        "(repeatable)")
    p.add_argument("--allowed-image", action="append", default=[],
                   help="an image a silo may name: a repository, an exact reference, or a "
                        "prefix ending in / (repeatable; none given: any image)")
    p.add_argument("--verbose", action="store_true",
                   help="debug logs, and kopf's per-event handler logs")
    args = p.parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        ns = os.environ.get("FEDMA_NAMESPACE")
        if not ns:
            p.error("give --namespace NS (repeatable), --all-namespaces, or $FEDMA_NAMESPACE")
        args.namespace = [ns]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        # kopf logs "Handler ... succeeded." for every watch event of every Job at INFO:
        # hundreds of lines per round, and a few percent of the operator's CPU under load.
        # Our own logger says what a reconcile did; --verbose brings kopf's back.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    serve(args.metrics_port)
    cfg = OperatorConfig(JobSettings(trainer_image=args.trainer_image,
                                     service_account=args.trainer_service_account,
                                     metrics_port=args.trainer_metrics_port,
                                     ttl_after_finished_s=args.job_ttl or None),
                         interval_s=args.interval, cluster_grace_s=args.silo_cluster_grace,
                         clusterwide=args.all_namespaces, namespaces=tuple(args.namespace),
                         api_timeout_s=args.api_timeout,
                         tenancy=Tenancy(frozenset(args.silo_namespace),
                                         tuple(args.allowed_image), args.trainer_image))
    asyncio.run(kopf.operator(
        registry=build_registry(cfg), standalone=True, clusterwide=args.all_namespaces,
        namespaces=args.namespace, liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    ))


if __name__ == "__main__":
    main()
