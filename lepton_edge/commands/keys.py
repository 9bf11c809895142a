"""``lepton-edge keys generate OUTDIR``: an Ed25519 key pair for signing artifacts."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make signing keys",
                       description="Manage the Ed25519 keys that sign artifact manifests.")
    keys_sub = p.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=type(p))
    keys_sub.required = True
    g = keys_sub.add_parser("generate", help="write signing.key (0600) and signing.pub into OUTDIR",
                            description="Write a new Ed25519 key pair: OUTDIR/signing.key (PKCS#8 PEM, mode 0600) "
                                        "and OUTDIR/signing.pub (PEM). Refuses to overwrite an existing pair.")
    g.add_argument("outdir", metavar="OUTDIR")
    g.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from lepton_edge.artifact import generate_keypair, key_id, load_public_key

    priv, pub = generate_keypair(args.outdir)
    print(f"wrote {priv} (private, mode 0600) and {pub} (public); key id {key_id(load_public_key(pub))}")
    return 0
