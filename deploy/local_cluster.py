"""Helpers of deploy/local-cluster-check.sh, which runs the user's `ray up` / `ray submit` / `ray down` on one machine.

`derive` writes the cluster file the check uses: deploy/cluster-onprem.yaml with only what a user edits
changed (the head and worker addresses, the SSH account and key, the datasets' folder), and refuses to write
one that differs anywhere else, so the check proves the file as shipped. `query` asks the head's Prometheus
for a number, `nodes` lists the cluster's live nodes by address, `placement` reads the driver's placement line.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

DATA_PLACEHOLDER = "/srv/gcrl-data"  # the EDIT folder in head_setup_commands
PLACEMENT_LINE = re.compile(r"^placement: (.*)$", re.MULTILINE)


def derive(source: dict, head_ip: str, external_head_ip: str, worker_ip: str, user: str, key: str,
           data: str) -> dict:
    """The source cluster config with only the user's EDIT values replaced (and checked to be the only change)."""
    config = copy.deepcopy(source)
    config["provider"].update(head_ip=head_ip, external_head_ip=external_head_ip, worker_ips=[worker_ip])
    config["auth"] = {"ssh_user": user, "ssh_private_key": key}
    commands = config["head_setup_commands"]
    if not any(DATA_PLACEHOLDER in c for c in commands):
        raise SystemExit(f"error: no {DATA_PLACEHOLDER} in head_setup_commands of the cluster file")
    config["head_setup_commands"] = [c.replace(DATA_PLACEHOLDER, data) for c in commands]
    check_only_edits(source, config)
    return config


def check_only_edits(source: dict, derived: dict) -> None:
    """Refuse a derived config that differs from the source outside the EDIT values."""
    def masked(config: dict) -> dict:
        config = copy.deepcopy(config)
        for key in ("head_ip", "external_head_ip", "worker_ips"):
            config["provider"].pop(key, None)
        config.pop("auth")
        config["head_setup_commands"] = [re.sub(r"deploy\.datasets \S+", "deploy.datasets DATA", c)
                                         for c in config["head_setup_commands"]]
        return config
    if masked(source) != masked(derived):
        raise SystemExit("error: the derived cluster file differs from the source beyond its EDIT values")


def query(url: str, expression: str) -> float:
    """The largest value of an instant PromQL query at `url` (0 when it returns no series)."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    with urllib.request.urlopen(address, timeout=10) as response:
        result = json.load(response)["data"]["result"]
    return max((float(r["value"][1]) for r in result), default=0.0)


def live_nodes(address: str) -> list[str]:
    """Addresses of the cluster's live nodes (one line each), from the head's GCS."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()


def rollout_nodes(log: str) -> dict[str, int]:
    """Rollout actors per node address, from the driver's last `placement:` line ({} when there is none)."""
    lines = PLACEMENT_LINE.findall(log)
    if not lines:
        return {}
    counts = {}
    for part in lines[-1].split("; "):
        address, _, roles = part.partition(": ")
        found = re.search(r"rollout (\d+)", roles)
        if found:
            counts[address] = int(found.group(1))
    return counts


def main(argv: list[str] | None = None) -> int:
    """Subcommands: derive, query, nodes, placement (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.local_cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("derive")
    for name in ("source", "out", "head-ip", "external-head-ip", "worker-ip", "user", "key", "data"):
        d.add_argument(f"--{name}", required=True)
    q = sub.add_parser("query")
    q.add_argument("url")
    q.add_argument("expression")
    n = sub.add_parser("nodes")
    n.add_argument("address")
    p = sub.add_parser("placement")
    p.add_argument("log", type=Path)
    args = parser.parse_args(argv)
    if args.command == "derive":
        config = derive(yaml.safe_load(Path(args.source).read_text()), args.head_ip, args.external_head_ip,
                        args.worker_ip, args.user, args.key, args.data)
        Path(args.out).write_text(yaml.safe_dump(config, sort_keys=False))
    elif args.command == "query":
        print(f"{query(args.url, args.expression):g}")
    elif args.command == "nodes":
        print("\n".join(live_nodes(args.address)))
    else:
        print(" ".join(f"{a}={c}" for a, c in rollout_nodes(args.log.read_text(errors="replace")).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
