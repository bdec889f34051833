"""The unified-diff applier: all or nothing, never outside the workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.coordinator import (
    PatchError,
    UnifiedDiffApplier,
    apply_unified_diff,
    make_unified_diff,
)

pytestmark = pytest.mark.anyio


class TestUnifiedDiffApplier:
    def test_creates_modifies_and_deletes_files(self, tmp_path: Path) -> None:
        apply_unified_diff(tmp_path, make_unified_diff("pkg/a.py", None, "one\ntwo\n"))
        result = apply_unified_diff(
            tmp_path, make_unified_diff("pkg/a.py", "one\ntwo\n", "one\n2\n")
        )
        assert (tmp_path / "pkg/a.py").read_text() == "one\n2\n"
        assert (result.files, result.added, result.removed) == (("pkg/a.py",), 1, 1)
        apply_unified_diff(tmp_path, "--- a/pkg/a.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-one\n-2\n")
        assert not (tmp_path / "pkg/a.py").exists()

    def test_handles_a_missing_newline_at_the_end(self, tmp_path: Path) -> None:
        (tmp_path / "a.txt").write_text("x\ny")
        diff = (
            "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n x\n-y\n\\ No newline at end of file\n+z\n"
        )
        apply_unified_diff(tmp_path, diff)
        assert (tmp_path / "a.txt").read_text() == "x\nz\n"

    def test_a_hunk_that_does_not_match_changes_no_file(self, tmp_path: Path) -> None:
        (tmp_path / "a.txt").write_text("a\n")
        (tmp_path / "b.txt").write_text("b\n")
        diff = make_unified_diff("a.txt", "a\n", "A\n") + make_unified_diff(
            "b.txt", "other\n", "B\n"
        )
        with pytest.raises(PatchError, match=r"'b\.txt': hunk 1 .* does not match"):
            apply_unified_diff(tmp_path, diff)
        assert (tmp_path / "a.txt").read_text() == "a\n"

    @pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../x"])
    def test_paths_cannot_leave_the_workspace(self, tmp_path: Path, path: str) -> None:
        diff = f"--- /dev/null\n+++ {path}\n@@ -0,0 +1 @@\n+x\n"
        with pytest.raises(PatchError, match="relative to the workspace"):
            apply_unified_diff(tmp_path / "ws", diff)

    def test_text_without_file_headers_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(PatchError, match="no file headers"):
            apply_unified_diff(tmp_path, "just words\n")

    def test_creating_an_existing_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "a.txt").write_text("a\n")
        with pytest.raises(PatchError, match="already exists"):
            apply_unified_diff(tmp_path, make_unified_diff("a.txt", None, "b\n"))

    async def test_applies_in_a_worker_thread(self, tmp_path: Path) -> None:
        result = await UnifiedDiffApplier().apply(tmp_path, make_unified_diff("a.txt", None, "a\n"))
        assert result.files == ("a.txt",)
        assert (tmp_path / "a.txt").read_text() == "a\n"
