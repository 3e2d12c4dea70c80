"""docs/configuration.md's settings tables are the ones the settings models generate."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from pipeline.models import ARCHITECTURE_NAMES
from service.settings import AppSettings
from service.stages import STAGES
from tools.config_table import DOC, END, FIX, START, generate, replace_between_markers, rows, table


def test_committed_tables_are_the_generated_ones():
    current = DOC.read_text()
    assert replace_between_markers(current, generate()) == current, (
        f"{DOC.relative_to(DOC.parents[1])} is out of date with the settings models; run: {FIX}")


def test_the_tables_reach_every_nested_section():
    """Guards the walk: a generator that stopped at the top level would still match its own output."""
    keys = {row.key for row in rows(AppSettings)}
    assert {".".join(spec.section) for spec in STAGES} <= keys  # the stage table's sections
    assert {"auth.app_check.project_id", "storage.bucket", "storage.root", "limits.max_pixels",
            "url_fetch.allow_hosts", "face_remaster.max_faces", "model_store.endpoint"} <= keys
    generated = generate()
    assert all(f"`{name}`" in generated for name in ARCHITECTURE_NAMES)  # the model entry's choices
    assert "| `diffusion.steps` | `8` | integer ≥ 1, ≤ 100 |" in generated  # default and bounds
    assert "| `storage.bucket` (backend `minio`) | required |" in generated  # union members are tagged


def test_a_setting_without_a_description_is_refused():
    class Section(BaseModel):
        documented: int = Field(1, description="says what it is")
        silent: int = 2

    with pytest.raises(ValueError, match="'section.silent' has no Field\\(description"):
        table(Section, "section.")


def test_only_the_text_between_the_markers_is_replaced():
    page = f"intro\n{START}\nold table\n{END}\noutro\n"
    assert replace_between_markers(page, "new table") == f"intro\n{START}\n\nnew table\n\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("no markers here", "new table")
