"""bench.collect: METRIC parsing, module discovery, failures become rows."""

from __future__ import annotations

from bench import collect


def test_parse_metrics_accepts_both_forms_and_ignores_other_lines() -> None:
    text = (
        "warming up\nMETRIC scenes_per_s 41.5\nMETRIC forward_ms_per_image=3.20\n"
        "  METRIC x_s 9 (extrapolated)\nMETRICS no\n"
    )
    rows = collect.parse_metrics(text, "m")
    assert [(r.name, r.value, r.note) for r in rows] == [
        ("scenes_per_s", "41.5", ""),
        ("forward_ms_per_image", "3.20", ""),
        ("x_s", "9", "(extrapolated)"),
    ]
    assert all(r.module == "m" for r in rows)


def test_bench_modules_lists_the_package_without_the_collector() -> None:
    names = collect.bench_modules()
    assert "collect" not in names and "data_rate" in names and names == sorted(names)
    assert "fake_ls" not in names  # a helper server, prints no METRIC


def test_module_args_parse() -> None:
    assert collect.parse_module_args(["loop=--sizes 1000 --x 'a b'"]) == {"loop": ["--sizes", "1000", "--x", "a b"]}
    assert collect.main(["--module-args", "oops", "--out", "/dev/null"]) == 2


def test_unknown_module_is_rejected(capsys) -> None:  # noqa: ANN001
    assert collect.main(["--only", "nope", "--out", "/dev/null"]) == 2
    assert "nope" in capsys.readouterr().err


def test_markdown_table() -> None:
    md = collect.to_markdown([collect.Metric("a", "1", "m", "n")])
    assert md.splitlines()[2] == "| a | 1 | bench.m | n |"
