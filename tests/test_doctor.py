from kf_desktop.doctor import collect, run_doctor


def test_doctor_checks_everything_and_gives_a_fix_for_each_problem(capsys):
    checks = collect()
    names = {c.name for c in checks}
    assert {"python", "torch", "gpu", "triton", "mediapipe", "cameras", "microphones",
            "virtual camera", "model weights"} <= names
    for c in checks:
        assert c.detail
        if not c.ok:
            assert c.fix, c.name
    # This machine has no camera, microphone or v4l2loopback: problems, exit 1.
    code = run_doctor()
    out = capsys.readouterr().out
    assert code == (1 if any(not c.ok and not c.optional for c in checks) else 0)
    assert "mediapipe" in out and "fix:" in out
