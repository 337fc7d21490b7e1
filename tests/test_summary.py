import pytest

from proxyformer.summary import main, parse_size, summarize


def test_components_add_up_and_parameters_match():
    result = summarize("tiny", frames=2, size=(64, 96), text_length=8)
    rows = {r["component"]: r for r in result["rows"]}
    assert abs(sum(r["gflops"] for r in result["rows"]) - result["total_gflops"]) < 1e-6
    assert rows["other"]["gflops"] < 0.01 * result["total_gflops"]  # components cover it all
    assert all(rows[c]["gflops"] > 0 for c in ("backbone", "input_proj", "text_encoder", "cmie", "fpn", "decoder", "heads"))
    assert abs(sum(r["params_m"] for r in result["rows"]) - result["total_params_m"]) < 1e-6
    assert result["total_gmacs"] == pytest.approx(result["total_gflops"] / 2)


def test_compute_grows_with_frames():
    two = summarize("tiny", frames=2, size=(64, 64), text_length=8)["total_gflops"]
    four = summarize("tiny", frames=4, size=(64, 64), text_length=8)["total_gflops"]
    assert 1.8 * two < four < 2.2 * two


def test_command_line(capsys):
    main(["--preset", "tiny", "--frames", "2", "--size", "64x64", "--set", "cmie.use_p2v=false"])
    out = capsys.readouterr().out
    assert "| cmie |" in out and "use_p2v" in out
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--size", "64by64"])
    with pytest.raises(Exception, match="at least 32x32"):
        parse_size("16x64")
