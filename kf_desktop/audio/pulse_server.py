"""A private PulseAudio daemon with null sinks, for tests, benchmarks and
headless machines (CI has no sound card and no microphone).

A null sink swallows what is played into it and exposes it as the capture
source ``<sink>.monitor``, so ``paplay --device=<sink> speech.wav`` while a
``MicSource("pulse:<sink>.monitor")`` records exercises the real PortAudio ->
ALSA ``pulse`` plugin -> PulseAudio capture path end to end.

The daemon runs with its own runtime directory and socket (nothing of the
user's sound setup is touched); ``env()`` gives the variables a client needs.
Needs the Debian packages ``pulseaudio`` (daemon, pactl, paplay) and
``libasound2-plugins`` (ALSA's ``pulse`` device that PortAudio opens).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class PulseUnavailable(RuntimeError):
    """pulseaudio is not installed or did not start."""


class PulseServer:
    def __init__(self, sinks: dict[str, int] | None = None) -> None:
        """sinks: null sink name -> sample rate."""
        self.sinks = dict(sinks or {"kfnull": 48000})
        self.dir = Path(tempfile.mkdtemp(prefix="kf-pulse-"))
        self.socket = self.dir / "native"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "pulse.log"

    def env(self) -> dict[str, str]:
        """Environment for clients (merge into os.environ or pass to subprocesses)."""
        return {"PULSE_SERVER": f"unix:{self.socket}"}

    def start(self, timeout: float = 10.0) -> "PulseServer":
        exe = shutil.which("pulseaudio")
        if exe is None:
            raise PulseUnavailable("the pulseaudio binary is not installed (Debian: apt-get install pulseaudio)")
        args = [exe, "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                "--use-pid-file=no", "--system=false", "--log-target=stderr",
                "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1"]
        for name, rate in self.sinks.items():
            args += ["-L", f"module-null-sink sink_name={name} rate={rate}"]
        env = dict(os.environ)
        # Keep the daemon's state (cookie, runtime files) in our directory,
        # away from any real user session on the machine.
        env.update({"HOME": str(self.dir), "XDG_RUNTIME_DIR": str(self.dir),
                    "XDG_CONFIG_HOME": str(self.dir / "config"),
                    "PULSE_RUNTIME_PATH": str(self.dir / "runtime"),
                    "PULSE_STATE_PATH": str(self.dir / "state")})
        env.pop("PULSE_SERVER", None)
        if self.socket.exists():  # stale socket of a killed daemon (restart)
            self.socket.unlink()
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PulseUnavailable(f"pulseaudio exited with {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists() and self.pactl("info", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        self.stop()
        raise PulseUnavailable(f"pulseaudio did not come up in {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.update(self.env())
        return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True,
                              timeout=10, check=check)

    def play(self, wav: str | os.PathLike, sink: str | None = None) -> subprocess.Popen:
        """Start ``paplay`` of a WAV file into a null sink (returns the process)."""
        env = dict(os.environ)
        env.update(self.env())
        sink = sink or next(iter(self.sinks))
        return subprocess.Popen(["paplay", f"--device={sink}", str(wav)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def kill(self) -> None:
        """Simulate a crash (the device disappearing): SIGKILL the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PulseServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def refresh_portaudio() -> None:
    """Re-enumerate PortAudio devices (the ALSA ``pulse`` device is only listed
    while a server is reachable). Only call it while no stream is open."""
    import sounddevice as sd

    sd._terminate()  # noqa: SLF001 -- sounddevice's documented way to rescan
    sd._initialize()  # noqa: SLF001
