"""``pneumocnn listen``: run a DICOM node that triages the X-rays sent to it."""

from __future__ import annotations

import argparse
import logging

from pneumocnn.commands.command import OK, Command
from pneumocnn.commands.options import (
    add_guard_option,
    add_heatmap_options,
    add_model_options,
    load_model,
)

DESCRIPTION = (
    "A DICOM storage SCP for chest radiographs (CR, DX, Secondary Capture; C-ECHO answered; other SOP "
    "classes refused): each object is stored in OUT/received before its C-STORE is answered, then "
    "scored into OUT's worklist (worklist.csv, report.html) and a Structured Report in OUT/results, "
    "sent on to --forward. Runs until interrupted (Ctrl-C, SIGTERM); a restart scores what was stored "
    "but not yet scored.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("--out", required=True, help="the node's folder")
    parser.add_argument("--port", type=int, default=11112, help="TCP port (default: %(default)s)")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--ae-title", default="PNEUMOCNN", help="the node's AE title, which senders "
                        "must call (default: %(default)s)")
    parser.add_argument("--allow", nargs="+", metavar="AE", help="calling AE titles allowed to store "
                        "(default: any)")
    parser.add_argument("--forward", metavar="AE@HOST:PORT", help="send each Structured Report to "
                        "this storage SCP (a PACS), e.g. PACS@10.0.0.5:104")
    parser.add_argument("--max-associations", type=int, default=10,
                        help="associations at once; more are rejected (default: %(default)s)")
    parser.add_argument("--max-object-mb", type=float, default=100.0,
                        help="largest object accepted, in MiB (default: %(default)s)")
    parser.add_argument("--tls-cert", help="listen with TLS: the node's certificate (PEM)")
    parser.add_argument("--tls-key", help="with --tls-cert: its private key (PEM)")
    parser.add_argument("--tls-ca", help="with --tls-cert: accept only senders whose certificate this "
                        "CA signed (mutual TLS)")
    add_model_options(parser)
    add_heatmap_options(parser)
    add_guard_option(parser)


def run(args: argparse.Namespace) -> int:
    """Run the DICOM node until interrupted; return 0."""
    from pneumocnn.clinic.node import serve, tls_context

    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
        raise ValueError("--tls-cert and --tls-key go together (--tls-ca with them)")
    logging.getLogger("pneumocnn").setLevel(logging.INFO)  # each store, score and refusal
    for handler in logging.getLogger().handlers:  # a server's log needs the time
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    serve(args.out, load_model(args), port=args.port, host=args.bind, ae_title=args.ae_title,
          allow=args.allow, forward=args.forward, max_associations=args.max_associations,
          max_object_mb=args.max_object_mb, tls=tls, heatmaps=args.heatmaps, guard=args.guard)
    return OK


COMMAND = Command("listen", "run a DICOM node: triage the X-rays sent to it (needs [dicom-net])",
                  add_arguments, run, description=DESCRIPTION)
