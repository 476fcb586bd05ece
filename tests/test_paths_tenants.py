"""Tenant folders under the allowed roots: what a tenant may name, and what a folder expansion may reach.

Pure filesystem checks (no services): the HTTP tests in test_serve_security.py drive the same code
through the deployed API.
"""

from __future__ import annotations

import os

import pytest

from raysys.config import Settings
from raysys.errors import Forbidden, InvalidInput
from raysys.ingest.batch import expand_paths
from raysys.paths import confine_to_tenant, tenant_roots


@pytest.fixture
def layout(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    uploads, documents = settings.allowed_roots
    for tenant in ("acme", "globex"):
        folder = os.path.join(documents, tenant)
        os.makedirs(folder)
        with open(os.path.join(folder, f"{tenant}.md"), "w") as f:
            f.write(f"# {tenant}\n")
    return settings, documents


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "..\\x", "a\x00b", "x" * 201])
def test_a_tenant_id_that_is_not_one_folder_name_is_refused(bad):
    with pytest.raises(InvalidInput):
        tenant_roots(["/srv/docs"], bad)


def test_tenant_paths_resolve_inside_the_tenants_folders_only(layout):
    settings, documents = layout
    own = confine_to_tenant("acme.md", settings.allowed_roots, "acme")  # relative: from the tenant's folders
    assert str(own) == os.path.realpath(os.path.join(documents, "acme", "acme.md"))
    for path in ("../globex/globex.md", os.path.join(documents, "globex", "globex.md"), documents, "..", "/etc/passwd"):
        with pytest.raises(Forbidden) as err:
            confine_to_tenant(path, settings.allowed_roots, "acme")
        assert documents not in str(err.value).replace(repr(path), "")  # only the path as given is named


def test_expanding_a_tenants_folder_never_leads_out_of_it(layout):
    settings, documents = layout
    acme = os.path.join(documents, "acme")
    os.symlink(os.path.join(documents, "globex", "globex.md"), os.path.join(acme, "link.md"))
    files, failed = expand_paths(settings, [acme], tenant_id="acme")
    assert [p.name for _, p in files] == ["acme.md"]
    assert [(os.path.basename(f["source_path"]), f["error"]["type"]) for f in failed] == [("link.md", "Forbidden")]
    # Without a tenant (an operator's batch through the queue) the roots stay the limit, as before.
    files, failed = expand_paths(settings, [acme])
    assert sorted(p.name for _, p in files) == ["acme.md", "globex.md"] and not failed
