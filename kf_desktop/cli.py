"""Command-line entry points: `kf-desktop <command>`.

User errors (bad photo, missing device, unwritable path) print a message and
a fix and exit with status 2, without a traceback. Heavy imports (torch,
mediapipe) happen inside the commands, so `--help` and `--version` are fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kf_desktop import __version__
from kf_desktop.cli_args import (bench_seconds_value, camera_index, device_spec, fps_value,
                                 parse_size, positive_float, seconds_value)
from kf_desktop.errors import UserError
from kf_desktop.model_choice import NOT_AS_ASKED, generator_refused, warn_unused_weights

__all__ = ["main", "build_parser", "parse_size", "positive_float", "generator_options"]

REPO_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_PORTRAIT = REPO_RESOURCES / "portraits" / "astronaut.png"
DEMO_DRIVER = "cap13_edit2.mp4"


def _add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--overwrite", action="store_true",
                   help="replace an existing output file without asking (without it: asked "
                        "on a terminal, else refused)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["auto", "guide", "generator"], default="auto",
                   help="auto (default): the Knot Forcing model on a GPU with trained weights, "
                        "else guide-only; guide: motion-guide warp only; generator: the model")
    p.add_argument("--device", type=device_spec, default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--weights", help="Knot Forcing weights folder (default: the shipped model)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="without trained weights, run a randomly initialised model "
                        "(labelled UNTRAINED; for testing the pipeline)")
    p.add_argument("--untrained-preset", default="default", help=argparse.SUPPRESS)


def generator_options(args: argparse.Namespace) -> dict:
    from kf_desktop.model_choice import decision_printer

    return {"weights": Path(args.weights) if getattr(args, "weights", None) else None,
            "allow_untrained": getattr(args, "allow_untrained", False),
            "untrained_preset": getattr(args, "untrained_preset", "default"),
            # --mode auto: its one decision is said once, by the generator factory
            "on_decision": decision_printer(args)}


def _cmd_data(args: argparse.Namespace) -> int:
    from kf_desktop import data
    from kf_desktop.progress import ProgressBar

    bars: dict[str, ProgressBar] = {}

    def progress(label: str, done: int, total: int) -> None:
        bar = bars.setdefault(label, ProgressBar(f"  {label}", total))
        bar.update(done, total)

    print(f"fetching data into {data.data_dir()}")
    root = data.fetch(progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"data ready: {root}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from kf_desktop.render import RenderRequest, render

    req = RenderRequest(portrait=Path(args.portrait), driver=args.driver and Path(args.driver),
                        audio=getattr(args, "audio", None) and Path(args.audio),
                        out=Path(args.out), seconds=args.seconds, size=args.size,
                        fps=args.fps, mode=args.mode, device=args.device,
                        generator_options=generator_options(args),
                        overwrite=getattr(args, "overwrite", False))
    result = render(req)
    print(f"wrote {result.path.resolve()} ({result.frames} frames, "
          f"{result.seconds:.{1 if result.seconds >= 1 else 2}f} s at "
          f"{result.fps:g} fps, {result.size[0]}x{result.size[1]}; {result.label})")
    if "produced no finite frame" in result.label:
        print("error: the Knot Forcing model never produced a finite frame (see the warning "
              "above): the video is guide-only", file=sys.stderr)
        print("  fix: re-download or re-train the weights; --mode guide skips the model",
              file=sys.stderr)
        return NOT_AS_ASKED
    if generator_refused(args.mode, result.label):
        print("error: --mode generator was asked for, but the Knot Forcing model was refused "
              "(see the warning above): the video is guide-only", file=sys.stderr)
        return NOT_AS_ASKED
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from kf_desktop.data import verified_data_path

    args.driver = str(verified_data_path(DEMO_DRIVER))
    args.portrait = str(DEFAULT_PORTRAIT)
    return _cmd_render(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from kf_desktop.live import run_live

    return run_live(args)


def av_trim_value(text: str) -> float:
    from kf_desktop.audio.virtual_mic import TRIM_MAX_MS, TRIM_MIN_MS

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not TRIM_MIN_MS <= v <= TRIM_MAX_MS:
        raise argparse.ArgumentTypeError(f"must be {TRIM_MIN_MS:g}..{TRIM_MAX_MS:g} ms, got {text}")
    return v


def video_delay_value(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 <= v <= 1000:
        raise argparse.ArgumentTypeError(f"must be 0..1000 ms, got {text}")
    return v


def _cmd_avsync(args: argparse.Namespace) -> int:
    from kf_desktop.avsync import main as avsync_main

    return avsync_main(args.rest)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from kf_desktop.doctor import run_doctor

    return run_doctor()


def _cmd_bench(args: argparse.Namespace) -> int:
    from kf_desktop.bench import run_bench

    warn_unused_weights(args)
    return run_bench(args)


def _cmd_gui(args: argparse.Namespace) -> int:
    photo = getattr(args, "portrait", None)
    if photo:
        from kf_desktop.input_path import regular_file

        args.portrait = str(regular_file(photo, "portrait photo").resolve())
    try:
        from ui.app import run_app
    except ImportError as e:
        raise UserError(f"the desktop window is not available: {e}",
                        "use `kf-desktop run` (headless) or `kf-desktop render`") from e
    return run_app(args)


NO_DISPLAY_TEXT = """\
kf-desktop: there is no display here, so the window cannot open. Try:
  kf-desktop demo       render the built-in demo to kf-demo.mp4
  kf-desktop run        stream to the virtual camera with a status line (Ctrl-C stops)
  kf-desktop render --portrait PHOTO --driver VIDEO   animate a photo
  kf-desktop doctor     check this machine
  kf-desktop --help     every command
"""


def has_display(env: dict | None = None, platform: str | None = None) -> bool:
    """Whether a window the user can see can open: on Linux an X11 or
    Wayland session (an offscreen Qt platform does not count); Windows and
    macOS desktops always have one."""
    env = os.environ if env is None else env
    if not (platform or sys.platform).startswith("linux"):
        return True
    if env.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal", "vnc"):
        return False
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _no_command() -> argparse.Namespace | None:
    """`kf-desktop` alone: the window where there is a display."""
    if has_display():
        print("opening the window (`kf-desktop --help` lists the commands)", file=sys.stderr)
        return argparse.Namespace(command="gui", check=False, portrait=None, func=_cmd_gui)
    print(NO_DISPLAY_TEXT, file=sys.stderr, end="")
    return None


def gui_main() -> int:
    """`kf-desktop-gui [PHOTO]` (the menu entry, "Open with"): `kf-desktop gui`."""
    return main(["gui", *sys.argv[1:]])


def _cmd_passthrough(args: argparse.Namespace) -> int:
    from kf_desktop import train_cli

    fn = {"train": train_cli.train_main, "eval": train_cli.eval_main,
          "dataset": train_cli.dataset_main}[args.command]
    return int(fn(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kf-desktop",
        description="One portrait photo becomes a live, talking virtual webcam.")
    p.add_argument("--version", action="version", version=f"kf-desktop {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("render", help="render a portrait driven by a video to mp4 (headless)")
    r.add_argument("--portrait", default=str(DEFAULT_PORTRAIT), help="portrait photo")
    r.add_argument("--driver", help="driving video (a talking-head clip)")
    r.add_argument("--audio", help="speech WAV: drives the mouth (with idle head motion "
                   "when there is no --driver) and becomes the video's sound track")
    r.add_argument("--seconds", type=seconds_value, help="render at most this long")
    r.add_argument("--out", default="kf-render.mp4",
                   help="output video: .mp4 (default), .mov or .mkv; never one of the inputs")
    _add_overwrite_arg(r)
    r.add_argument("--size", type=parse_size, default=(1280, 720), help="output WxH")
    r.add_argument("--fps", type=fps_value, help="output fps, 1-120 (default: the driver's)")
    _add_model_args(r)
    r.set_defaults(func=_cmd_render)

    dm = sub.add_parser("demo", help="render the built-in demo (default portrait + fetched clip)")
    dm.add_argument("--seconds", type=seconds_value, default=10.0)
    dm.add_argument("--out", default="kf-demo.mp4", help="output video (.mp4, .mov or .mkv)")
    _add_overwrite_arg(dm)
    dm.add_argument("--size", type=parse_size, default=(1280, 720))
    dm.add_argument("--fps", type=fps_value)
    _add_model_args(dm)
    dm.set_defaults(func=_cmd_demo)

    rn = sub.add_parser("run", help="headless live streaming to the virtual camera")
    rn.add_argument("--camera", type=camera_index, default=0, help="camera index")
    rn.add_argument("--video", help="drive from a video file instead of a camera (loops)")
    rn.add_argument("--no-camera", action="store_true",
                    help="no webcam: idle head motion (+ the mouth from --mic/--audio)")
    rn.add_argument("--mic", nargs="?", const="default",
                    help="drive the mouth from a microphone (name or index; default device)")
    rn.add_argument("--audio", help="drive the mouth from a WAV played in real time (loops)")
    rn.add_argument("--portrait", default=str(DEFAULT_PORTRAIT))
    rn.add_argument("--vcam", action=argparse.BooleanOptionalAction, default=True,
                    help="publish to the virtual camera")
    rn.add_argument("--record", help="also record the output to this video (.mp4, .mov or .mkv)")
    _add_overwrite_arg(rn)
    rn.add_argument("--size", type=parse_size, default=(1280, 720))
    rn.add_argument("--fps", type=fps_value, default=30.0, help="output fps, 1-120")
    rn.add_argument("--seconds", type=seconds_value, help="stop after this long")
    rn.add_argument("--virtual-mic", action="store_true",
                    help="lips in sync in the call: hold the video to a constant delay and "
                         "play the microphone, delayed as much, into a virtual microphone "
                         "('kf-desktop microphone'; select it in the meeting app)")
    rn.add_argument("--av-trim", type=av_trim_value, default=0.0, metavar="MS",
                    help="with --virtual-mic: extra audio delay, -200..300 ms (default 0)")
    rn.add_argument("--video-delay", type=video_delay_value, default=None, metavar="MS",
                    help="with --virtual-mic: fixed video delay in ms (default: measured "
                         "pipeline latency + a margin)")
    _add_model_args(rn)
    rn.set_defaults(func=_cmd_run)

    av = sub.add_parser("avsync-check", help="measure lips vs the delayed virtual microphone "
                        "(private PulseAudio server, tone bursts)", add_help=False)
    av.add_argument("rest", nargs=argparse.REMAINDER, help="arguments (try --help)")
    av.set_defaults(func=_cmd_avsync)

    dr = sub.add_parser("doctor", help="check this machine and suggest fixes")
    dr.set_defaults(func=_cmd_doctor)

    b = sub.add_parser("bench", help="print the per-stage speed table")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.add_argument("--seconds", type=bench_seconds_value, default=8.0, help="live-session duration")
    b.add_argument("--size", type=parse_size, default=(1280, 720))
    b.add_argument("--fps", type=fps_value, default=30.0)
    b.add_argument("--engine", action="store_true", help="benchmark the Knot Forcing engine")
    b.add_argument("--serving", action="store_true",
                   help="many streams on one engine (joins, portrait switches) vs the naive engine")
    b.add_argument("--kernels", action="store_true", help="time the Triton kernels against torch (GPU)")
    b.add_argument("--preset", nargs="+", help="with --engine: the stream with and without Triton (GPU)")
    _add_model_args(b)
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("data", help="fetch the registry-shipped clips and speech")
    d.add_argument("action", choices=["fetch"])
    d.set_defaults(func=_cmd_data)

    for name, text in (("dataset", "build the training dataset from the fetched clips"),
                       ("train", "train the Knot Forcing model (resumable)"),
                       ("eval", "evaluate generator vs guide-only vs ablations")):
        sp = sub.add_parser(name, help=text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER,
                        help=f"arguments of `kf-desktop {name}` (try --help)")
        sp.set_defaults(func=_cmd_passthrough)

    g = sub.add_parser("gui", help="open the desktop window (what `kf-desktop` alone does "
                                   "when there is a display)")
    g.add_argument("portrait", nargs="?", help="a portrait photo to open the window with")
    g.add_argument("--check", action="store_true", help="only check that the window can open")
    g.set_defaults(func=_cmd_gui)
    return p


PASSTHROUGH = ("dataset", "train", "eval", "avsync-check")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        # These commands own their options (argparse REMAINDER would not pass
        # a leading --flag through).
        args = argparse.Namespace(command=argv[0], rest=argv[1:],
                                  func=_cmd_avsync if argv[0] == "avsync-check" else _cmd_passthrough)
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        if argv:  # e.g. only options: argparse has printed nothing
            parser.print_help()
            return 0
        args = _no_command()
        if args is None:
            return 2
    from kf_desktop.opencv_quiet import quiet_opencv

    quiet_opencv()  # the commands say what went wrong themselves
    if os.environ.get("KF_DEBUG"):
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:
        # engine errors (bad weights, bad stream input) carry message + hint
        if not hasattr(e, "hint"):
            raise
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
