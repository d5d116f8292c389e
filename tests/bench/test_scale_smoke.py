"""The scale benchmark keeps working (tiny sizes; its timings are not checked, its agreement is)."""

import re
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow


def test_scale_benchmark_compares_both_codes_and_prints_its_table(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/scale.py", "--sizes", "40", "120", "--hashes", "3000", "--rounds", "1",
         "--work", str(tmp_path), "--real", str(tmp_path / "no_real_posters")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # The previous code (git archive of the commit before issue 27) and today's agree on groups and split.
    assert len(re.findall(r"# N=\d+: same groups and split from both codes: True", out)) == 2
    rows = [line for line in out.splitlines() if re.match(r"\| [\d,]+ \| ", line)]
    assert len(rows) == 6 and all("before" in r or "now" in r for r in rows)
    # 2% planted exact + 2% near copies: fewer groups than files (40 posters: 1 exact, 1 near copy).
    groups = [int(r.rstrip(" |").rsplit("|", 1)[1].replace(",", "")) for r in rows]
    assert groups[:3] == [groups[0]] * 3 and groups[0] < 40 and groups[3] < 120
    assert re.search(r"growth exponent \(now, first run, whole intake\): -?[\d.]+", out)
    assert re.search(r"second run / first run at N=120: [\d.]+x faster", out)
    assert len(re.findall(r"grouping alone, 3,000 synthetic hashes .*: [\d.]+ s", out)) == 2
