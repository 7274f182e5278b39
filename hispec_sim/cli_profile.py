"""`hispec-sim profile import-vidur` and `hispec-sim profile synthetic`.

add_parsers(subparsers) registers the `profile` command; run(args) executes it. Bad input
raises ValueError("field: message") (the main CLI prints it on one line, exit status 2).
"""
from __future__ import annotations

from pathlib import Path

from . import schema
from .cli_common import check_output, float_in, int_in, int_list, name_text, shown
from .schema import Profile, Source, load_profile, save_profile

MS = float_in(0.0, schema.MAX_MS)


def add_parsers(subparsers):
    """Register `profile import-vidur` and `profile synthetic`; returns the `profile`
    subcommands (cli.py adds `measure`, which needs the executor)."""
    p = subparsers.add_parser("profile", help="build profiles: import a Vidur folder, a synthetic what-if, or measure one")
    sub = p.add_subparsers(dest="profile_cmd", metavar="{import-vidur,synthetic,measure}")
    sub.required = True

    v = sub.add_parser("import-vidur", help="latency part of a profile from a Vidur-format profiling folder")
    v.add_argument("folder", metavar="DIR", help="Vidur profiling root (compute/, network/) or a folder holding mlp.csv")
    v.add_argument("--model", help="model folder name or a part of it (e.g. Llama-2-70b-hf); for a folder holding mlp.csv, the model's name")
    v.add_argument("--gpu", help="GPU folder under compute/ (a100, h100); sets the datasheet hardware")
    v.add_argument("--tp", help="tensor-parallel degrees, comma separated (default: all in mlp.csv)")
    v.add_argument("--default-tp", type=int_in(1, schema.MAX_TP), help="default TP of the profile (default: the smallest imported)")
    v.add_argument("--layers", type=int_in(1, schema.MAX_LAYERS), help="decoder layers (needed when the model name is not a known Llama)")
    v.add_argument("--cluster", help="network/<cluster> for all-reduces (default <gpu>_dgx, else <gpu>_pairwise_nvlink)")
    v.add_argument("--overhead-ms", type=MS, default=0.0, help="fixed per-forward overhead (ms), default 0")
    v.add_argument("--fuse-elementwise", action="store_true",
                   help="leave out the measured norm/rope/act/add ops (a compiled stack fuses them)")
    v.add_argument("--acceptance-from", metavar="PROFILE", help="copy the workloads of this profile (same layer count)")
    v.add_argument("--name", type=name_text, help="profile name (default: <gpu>_<model>)")
    v.add_argument("--out", required=True, metavar="FILE")

    s = sub.add_parser("synthetic", help="what-if profile: constant layer cost, constant agreement")
    s.add_argument("--layers", type=int_in(1, schema.MAX_LAYERS), required=True, help="decoder layers, every one an exit")
    s.add_argument("--layer-ms", type=float_in(schema.MIN_LAYER_MS, schema.MAX_MS), required=True,
                   help="one layer's time (ms), at every token count")
    s.add_argument("--agreement", type=float_in(0.0, 1.0), required=True,
                   help="agreement of every exit pair, in [0, 1]")
    s.add_argument("--head-ms", type=MS, default=0.0, help="an exit head's time (ms; default 0)")
    s.add_argument("--overhead-ms", type=MS, default=0.0, help="fixed time per forward (ms; default 0)")
    s.add_argument("--name", type=name_text, help="profile name (default from the values)")
    s.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=run)
    return sub


def _parse_tps(text: str | None) -> list[int] | None:
    if not text:
        return None
    tps = int_list(text, "tp", 1, schema.MAX_TP)
    if len(set(tps)) < len(tps):
        raise ValueError(f"tp: each degree once, got {text!r}")
    return sorted(tps)


def placeholder_acceptance(num_layers: int):
    """A neutral depth curve, clearly marked assumed: F(L/4) = 0.5 with the steepness fitted
    to the published Llama2-70B points (c = 0.8, rounded)."""
    import math

    from .acceptance_fit import acceptance_from_fit, CurveFit

    c = 0.8
    m = -c * math.log((0.25) / 0.75)  # F(1/4) = 0.5
    fit = CurveFit(num_layers=num_layers, c=c, m={"placeholder": m}, points=[], residuals=[], c_fixed=True,
                   c_note="assumed placeholder, not fitted to this model")
    src = Source(kind="assumed", detail="PLACEHOLDER acceptance, not measured or published for this model: "
                 "F(e) = sigmoid(m + 0.8*logit(e/L)) with F(L/4) = 0.5, agreement(a,b) = F(a)/F(b). Replace it "
                 "with measured agreement (hispec-exec) or --acceptance-from a profile with published points.")
    return acceptance_from_fit(fit, "placeholder", context=512, source=src)


def import_vidur_profile(args) -> tuple[Profile, list]:
    """The profile, and the files it was read from."""
    from . import vidur

    tps = _parse_tps(args.tp)
    tables, shape, hw, read = vidur.import_vidur_full(args.folder, model=args.model, gpu=args.gpu, tps=tps,
                                                num_layers=args.layers, cluster=args.cluster,
                                                overhead_ms=_nonneg("overhead_ms", args.overhead_ms),
                                                fuse_elementwise=args.fuse_elementwise)
    default_tp = args.default_tp if args.default_tp is not None else tables[0].tp
    if default_tp not in [t.tp for t in tables]:
        raise ValueError(f"default_tp: {default_tp} not imported; imported: {[t.tp for t in tables]}")
    hw = hw.model_copy(update={"gpus": default_tp})
    if args.acceptance_from:
        other = load_profile(args.acceptance_from)
        if other.model.num_layers != shape.num_layers:
            raise ValueError(f"acceptance_from: {args.acceptance_from} has {other.model.num_layers} layers, this model {shape.num_layers}")
        workloads, default_w = dict(other.workloads), other.default_workload
        acc_note = f"acceptance copied from profile {other.name}"
    else:
        workloads, default_w = {"placeholder": placeholder_acceptance(shape.num_layers)}, "placeholder"
        acc_note = "acceptance: ASSUMED placeholder (workload 'placeholder'); not measured"
    name = args.name or f"{hw.name.split('-')[0].lower()}_{shape.name}"
    return Profile(name=name, description=f"{shape.name} on {hw.name}, imported from a Vidur folder; {acc_note}",
                   hardware=hw, model=shape, latency=tables, default_tp=default_tp, default_stack=tables[0].stack,
                   workloads=workloads, default_workload=default_w,
                   provenance={"latency": f"hispec-sim profile import-vidur {args.folder} ({vidur.VIDUR_CREDIT} when the folder is Vidur's own)",
                               "acceptance": acc_note}), read


def _nonneg(field: str, v: float) -> float:
    import math

    if v is None or not math.isfinite(v) or v < 0:
        raise ValueError(f"{field}: must be finite and >= 0, got {v}")
    return v


def run(args) -> int:
    if args.profile_cmd == "import-vidur":
        out, folder = Path(args.out).resolve(), Path(args.folder).resolve()
        if out.exists() and (out == folder or folder in out.parents):  # never overwrite the imported files
            raise ValueError(f"out: {args.out} is also an input of this command (inside {args.folder}); choose another file")
        check_output(args.out, inputs=[args.acceptance_from] if args.acceptance_from else [])
        prof, read = import_vidur_profile(args)
        check_output(args.out, inputs=read)  # network/ may lie above the folder given (vidur.find_network)
    elif args.profile_cmd == "synthetic":
        from .synthetic import synthetic_profile

        check_output(args.out)
        prof = synthetic_profile(args.layers, args.layer_ms, args.agreement, head_ms=args.head_ms,
                                 overhead_ms=args.overhead_ms, name=args.name)
    else:
        raise ValueError(f"profile: unknown command {args.profile_cmd!r}; known: import-vidur, synthetic")
    save_profile(prof, args.out)
    print(f"wrote {shown(args.out)}: {prof.name}, {prof.model.num_layers} layers, tables "
          f"{', '.join(t.key for t in prof.latency)}, workloads {', '.join(sorted(prof.workloads))}")
    return 0
