"""CLI: ``python -m generator --out prototxt`` regenerates every variant's nets.

  python -m generator --list                         variants and what they are
  python -m generator --out prototxt                 committed variants (light, strong,
                                                     light_relu) -> prototxt/<variant>/*.prototxt
  python -m generator --out prototxt --solvers solvers   ... and solvers/<name>.prototxt
                                                     (what `make prototxt` runs)
  python -m generator --out DIR --variant t2_5_push  any variant (repeatable)
  python -m generator --out DIR --ablations          every Table 2 row (`make ablations`)
  python -m generator --out prototxt --check         exit 1 if committed files are out of date
  python -m generator --variant light --phase deploy [--deploy-output embedding]
                                                     print one net to stdout
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rmnet.atomic import OutputError, check_output, describe_os_error
from generator.config import ConfigError, list_variants, load_variant
from generator.output import COMMITTED, ablation_variants, compare, write_all
from generator.plan import InputSizeError
from generator.render import OUTPUTS, PHASES, GenerationError, render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (the repo's is prototxt/)")
    ap.add_argument("--solvers", type=Path, metavar="DIR",
                    help="with --out: also the solvers, into DIR (the repo's is solvers/)")
    ap.add_argument("--variant", action="append", metavar="NAME",
                    help="render only this variant (repeatable); default: all")
    ap.add_argument("--ablations", action="store_true",
                    help="render the Table 2 rows (the variants that are not committed)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--check", action="store_true",
                    help="with --out: compare instead of writing; exit 1 on any difference")
    ap.add_argument("--phase", choices=PHASES, help="print one net of --variant to stdout")
    ap.add_argument("--deploy-output", choices=OUTPUTS,
                    help="with --phase deploy: the output blob (default: the variant's)")
    args = ap.parse_args(argv)
    try:
        if args.list:
            for name in list_variants():
                v = load_variant(name)
                cfg = v.config
                kind = "committed" if name in COMMITTED else "ablation"
                print(f"{name:28s} {kind:9s} {cfg['input']['height']}x{cfg['input']['width']}  "
                      f"{cfg.get('description', '')}")
            return 0
        if args.ablations:
            if args.variant:
                ap.error("--ablations renders every Table 2 row: give it without --variant")
            args.variant = ablation_variants()
        if args.variant:
            known = set(list_variants())
            for name in args.variant:
                if name not in known:
                    ap.error(f"unknown variant {name!r}; --list shows them")
        if args.phase:
            if not args.variant or len(args.variant) != 1:
                ap.error("--phase needs exactly one --variant")
            out = args.deploy_output if args.phase == "deploy" else None
            if args.deploy_output and args.phase != "deploy":
                ap.error("--deploy-output applies to --phase deploy")
            sys.stdout.write(render(args.variant[0], args.phase, deploy_output=out).text)
            return 0
        if args.out is None:
            ap.error("give --out DIR (or --list, or --variant NAME --phase PHASE)")
        if args.deploy_output:
            ap.error("--deploy-output applies to --phase deploy (committed files use each "
                     "variant's deploy.output)")
        if args.check:
            problems = compare(args.out, args.variant, args.solvers)
            for p in problems:
                print(p, file=sys.stderr)
            if problems:
                print("run: make prototxt", file=sys.stderr)
                return 1
            print(f"{args.out}: up to date")
            return 0
        try:
            for path, opt in ((args.out, "--out"), (args.solvers, "--solvers")):
                check_output(path, opt, folder=True)
            written, deleted = write_all(args.out, args.variant, args.solvers)
        except OutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"error: {describe_os_error(e)}", file=sys.stderr)
            return 2
        for p in written:
            print(f"wrote {p}")
        for p in deleted:
            print(f"deleted stale {p}")
        if not written and not deleted:
            print(f"{args.out}: up to date")
        return 0
    except (ConfigError, GenerationError, InputSizeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
