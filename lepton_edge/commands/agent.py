"""``lepton-edge agent``: run the on-device agent (model store, runtime, local API) until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the on-device agent: A/B model store, runtime and local API",
                       description="Serve the active model of the store over a local HTTP API. SIGTERM stops "
                                   "gracefully, SIGHUP reloads the configuration.")
    p.add_argument("--config", required=True, metavar="AGENT.toml",
                   help="agent configuration (see examples/agent.toml)")
    p.add_argument("--model", metavar="ARTIFACT_DIR|MODEL.tflite",
                   help="install and activate this model first, with the checks an over-the-air update gets "
                        "(a bare .tflite only when [security] require_signature = false)")
    p.set_defaults(func=run)


def log_to_stderr(command: str, loggers: tuple[str, ...] = ("lepton_edge.agent",)) -> None:
    """A daemon's log lines on stderr, prefixed with the command's name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"lepton-edge {command}: %(message)s"))
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run(args: argparse.Namespace) -> int:
    from lepton_edge.agent.config import load_config
    from lepton_edge.agent.daemon import Agent

    config = load_config(args.config)
    log_to_stderr("agent")
    agent = Agent(config)

    def ready(url: str) -> None:
        served = agent.current()
        what = (f"{served.name} v{served.version} (sha256 {served.sha256[:12]}) from slot {served.slot}"
                if served is not None else "no model yet")
        print(f"lepton-edge agent: device {config.device.id} serving {what} on {agent.backend}", flush=True)
        print(f"lepton-edge agent: listening on {url}", flush=True)

    return agent.run(args.model, ready)
