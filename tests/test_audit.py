"""The audit log through real gRPC: an entry for each change, filters, paging, isolation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.api.v1 import prompt_service_pb2_grpc as ppb_grpc
from promptgate.auth.model import Scope
from tests.conftest import Running, authed_channel, error_details

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# Helpers


def admin(channel: grpc.aio.Channel) -> apb_grpc.AdminServiceStub:
    return apb_grpc.AdminServiceStub(channel)


def version_body(template: str = "Say: {{ q }}", description: str = "") -> ppb.PromptVersion:
    return ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template=template)],
        input_variables=[pb.InputVariable(name="q", type=pb.INPUT_TYPE_STRING)],
        description=description,
    )


def plain(event: apb.AuditEvent) -> dict[str, Any]:
    """An entry as (action, resource, actor, before, after); before/after None when unset."""
    return {
        "action": event.action,
        "resource": event.resource,
        "actor": event.actor,
        "before": json_format.MessageToDict(event.before) if event.HasField("before") else None,
        "after": json_format.MessageToDict(event.after) if event.HasField("after") else None,
    }


async def list_events(
    channel: grpc.aio.Channel, page_size: int = 0, **filters: Any
) -> list[apb.AuditEvent]:
    """Every entry matching ``filters``, newest first, following the page tokens."""
    events: list[apb.AuditEvent] = []
    token = ""
    for _ in range(1000):
        page = await admin(channel).ListAuditEvents(
            apb.ListAuditEventsRequest(page_size=page_size, page_token=token, **filters)
        )
        events.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return events
    raise AssertionError("paging did not end")


async def key_id(channel: grpc.aio.Channel) -> str:
    return (await admin(channel).WhoAmI(apb.WhoAmIRequest())).api_key.id


async def new_key(channel: grpc.aio.Channel, *scopes: str) -> apb.CreateApiKeyResponse:
    return await admin(channel).CreateApiKey(
        apb.CreateApiKeyRequest(name="audited key", scopes=list(scopes), plan="unlimited")
    )


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


# Every change kind


async def test_dev_seeding_is_recorded_as_the_system(pg: Running) -> None:
    seeded = [plain(e) for e in await list_events(pg.channel)]
    dev_key = await key_id(pg.channel)
    assert [(e["action"], e["resource"], e["actor"]) for e in reversed(seeded)] == [
        ("workspace.create", "workspaces/default", "system"),
        ("api_key.create", f"apiKeys/{dev_key}", "system"),
        ("prompt.create", "prompts/demo", "system"),
        ("prompt_version.create", "prompts/demo/versions/1", "system"),
        ("release_tag.set", "prompts/demo/releaseTags/production", "system"),
    ]
    key_entry = seeded[-2]
    assert key_entry["before"] is None
    assert key_entry["after"]["scopes"] == sorted(s.value for s in Scope)
    assert key_entry["after"]["plan"] == "unlimited"


async def test_each_change_has_one_entry_with_its_actor_and_before_after(pg: Running) -> None:
    admin_id = await key_id(pg.channel)
    seeded = len(await list_events(pg.channel))
    started = datetime.now(UTC)

    editor = await new_key(pg.channel, "template.manage")
    editor_id = editor.api_key.id
    async with authed_channel(pg.address, editor.secret) as channel:
        prompts = ppb_grpc.PromptServiceStub(channel)
        created = await prompts.CreatePrompt(
            ppb.CreatePromptRequest(name="audited", description="first", labels={"team": "a"})
        )
        await prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="audited",
                version=version_body(description="v1 notes"),
                release_tags=["staging", "canary"],
            )
        )
        v2 = await prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="audited", version=version_body("Two: {{ q }}"))
        )
        await prompts.SetReleaseTag(
            ppb.SetReleaseTagRequest(prompt="audited", tag="staging", version=2)
        )
        await prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="audited"))
        await prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="audited"))  # no change
        await prompts.UnarchivePrompt(ppb.UnarchivePromptRequest(prompt="audited"))
    await admin(pg.channel).RevokeApiKey(apb.RevokeApiKeyRequest(key_id=editor_id))
    await admin(pg.channel).RevokeApiKey(apb.RevokeApiKeyRequest(key_id=editor_id))  # no change

    events = await list_events(pg.channel)
    new = events[: len(events) - seeded]
    got = [plain(e) for e in reversed(new)]
    expected = [
        {
            "action": "api_key.create",
            "resource": f"apiKeys/{editor_id}",
            "actor": admin_id,
            "before": None,
            "after": {
                "name": "audited key",
                "scopes": ["template.manage"],
                "plan": "unlimited",
                "limit_overrides": {},
                "expire_time": None,
            },
        },
        {
            "action": "prompt.create",
            "resource": "prompts/audited",
            "actor": editor_id,
            "before": None,
            "after": {"id": created.prompt.id, "description": "first", "labels": {"team": "a"}},
        },
        {
            "action": "prompt_version.create",
            "resource": "prompts/audited/versions/1",
            "actor": editor_id,
            "before": None,
            "after": {
                "version": 1,
                "id": got[2]["after"]["id"],
                "description": "v1 notes",
                "model": "mock-1",
                "provider": "",
            },
        },
        {
            "action": "release_tag.set",
            "resource": "prompts/audited/releaseTags/staging",
            "actor": editor_id,
            "before": None,
            "after": {"version": 1, "version_id": got[2]["after"]["id"]},
        },
        {
            "action": "release_tag.set",
            "resource": "prompts/audited/releaseTags/canary",
            "actor": editor_id,
            "before": None,
            "after": {"version": 1, "version_id": got[2]["after"]["id"]},
        },
        {
            "action": "prompt_version.create",
            "resource": "prompts/audited/versions/2",
            "actor": editor_id,
            "before": None,
            "after": {
                "version": 2,
                "id": v2.version.id,
                "description": "",
                "model": "mock-1",
                "provider": "",
            },
        },
        {
            "action": "release_tag.set",
            "resource": "prompts/audited/releaseTags/staging",
            "actor": editor_id,
            "before": {"version": 1},
            "after": {"version": 2, "version_id": v2.version.id},
        },
        {
            "action": "prompt.archive",
            "resource": "prompts/audited",
            "actor": editor_id,
            "before": {"archived": False},
            "after": {"archived": True},
        },
        {
            "action": "prompt.unarchive",
            "resource": "prompts/audited",
            "actor": editor_id,
            "before": {"archived": True},
            "after": {"archived": False},
        },
        {
            "action": "api_key.revoke",
            "resource": f"apiKeys/{editor_id}",
            "actor": admin_id,
            "before": {"revoked": False},
            "after": {"revoked": True},
        },
    ]
    assert got == expected
    assert got[2]["after"]["id"].startswith("ver_")
    assert len({e.id for e in events}) == len(events)
    assert all(e.id.startswith("aud_") for e in events)
    for event in new:
        assert started <= event.time.ToDatetime(UTC) <= datetime.now(UTC)
    times = [e.time.ToDatetime(UTC) for e in events]
    assert times == sorted(times, reverse=True)


async def test_failed_changes_record_nothing(pg: Running) -> None:
    prompts = pg.prompts
    await prompts.CreatePrompt(ppb.CreatePromptRequest(name="taken"))
    await prompts.CreatePrompt(ppb.CreatePromptRequest(name="shelved"))
    await prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="shelved"))
    before = await list_events(pg.channel)
    failing = [
        # The name is refused by the database at commit: the entry added with it goes too.
        prompts.CreatePrompt(ppb.CreatePromptRequest(name="taken")),
        prompts.CreatePrompt(ppb.CreatePromptRequest(name="bad name!")),
        prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="taken", version=version_body("{{ undeclared }}"))
        ),
        prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="taken", version=version_body(), release_tags=["latest"]
            )
        ),
        prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="shelved", version=version_body())
        ),
        prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="missing", version=version_body())
        ),
        prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="taken", tag="prod", version=7)),
        prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="demo", tag="latest", version=1)),
        prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="missing")),
        admin(pg.channel).CreateApiKey(apb.CreateApiKeyRequest(scopes=["root"])),
        admin(pg.channel).CreateApiKey(
            apb.CreateApiKeyRequest(scopes=["prompt.execute"], plan="platinum")
        ),
        admin(pg.channel).RevokeApiKey(apb.RevokeApiKeyRequest(key_id="0" * 26)),
    ]
    for call in failing:
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    after = await list_events(pg.channel)
    assert [e.id for e in after] == [e.id for e in before]


# Listing: filters and paging


async def test_filters_by_action_kind_resource_actor_and_time(pg: Running) -> None:
    editor = await new_key(pg.channel, "template.manage")
    async with authed_channel(pg.address, editor.secret) as channel:
        prompts = ppb_grpc.PromptServiceStub(channel)
        for name in ("a", "ab"):
            await prompts.CreatePrompt(ppb.CreatePromptRequest(name=name))
            await prompts.CreatePromptVersion(
                ppb.CreatePromptVersionRequest(
                    prompt=name, version=version_body(), release_tags=["production"]
                )
            )
        await prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="ab"))
    everything = await list_events(pg.channel)

    async def matching(**filters: Any) -> list[tuple[str, str]]:
        return [(e.action, e.resource) for e in await list_events(pg.channel, **filters)]

    def where(test: Any) -> list[tuple[str, str]]:
        return [(e.action, e.resource) for e in everything if test(e)]

    # A kind is every action of that kind, and only of that kind.
    assert await matching(action="prompt") == where(lambda e: e.action.startswith("prompt."))
    assert {a for a, _ in await matching(action="prompt")} == {
        "prompt.create",
        "prompt.archive",
    }
    assert await matching(action="prompt.archive") == [("prompt.archive", "prompts/ab")]
    assert len(await matching(action="prompt_version")) == 3  # demo, a, ab
    assert await matching(action="prompt.crea") == []
    assert await matching(action="prom") == []
    # A resource is itself and what is under it; "prompts/a" is not "prompts/ab".
    assert await matching(resource="prompts/a") == [
        ("release_tag.set", "prompts/a/releaseTags/production"),
        ("prompt_version.create", "prompts/a/versions/1"),
        ("prompt.create", "prompts/a"),
    ]
    assert await matching(resource="prompts/a/versions/1") == [
        ("prompt_version.create", "prompts/a/versions/1")
    ]
    assert await matching(resource="prompts") == where(lambda e: e.resource.startswith("prompts/"))
    assert await matching(resource="prompts/A") == []
    # Actors, and combinations.
    assert await matching(actor=editor.api_key.id) == where(lambda e: e.actor == editor.api_key.id)
    assert len(await matching(actor=editor.api_key.id)) == 7
    assert await matching(actor="system") == where(lambda e: e.actor == "system")
    assert await matching(actor="system", action="prompt") == [("prompt.create", "prompts/demo")]
    # Times: start inclusive, end exclusive.
    pivot = everything[3].time
    assert await matching(start_time=pivot) == where(
        lambda e: e.time.ToNanoseconds() >= pivot.ToNanoseconds()
    )
    assert await matching(end_time=pivot) == where(
        lambda e: e.time.ToNanoseconds() < pivot.ToNanoseconds()
    )
    assert len(await matching(start_time=pivot)) + len(await matching(end_time=pivot)) == len(
        everything
    )


async def test_pages_follow_the_filters_they_were_issued_for(pg: Running) -> None:
    for i in range(6):
        await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name=f"paged-{i}"))
    everything = await list_events(pg.channel)
    paged = await list_events(pg.channel, page_size=2)
    assert [e.id for e in paged] == [e.id for e in everything]
    filtered = await list_events(pg.channel, page_size=4, action="prompt.create")
    assert [e.resource for e in filtered] == [f"prompts/paged-{i}" for i in reversed(range(6))] + [
        "prompts/demo"
    ]

    stub = admin(pg.channel)
    first = await stub.ListAuditEvents(
        apb.ListAuditEventsRequest(page_size=2, action="prompt.create")
    )
    assert len(first.audit_events) == 2 and first.next_page_token
    # The same token with the same filters continues...
    second = await stub.ListAuditEvents(
        apb.ListAuditEventsRequest(
            page_size=3, action="prompt.create", page_token=first.next_page_token
        )
    )
    assert [e.id for e in second.audit_events] == [e.id for e in filtered[2:5]]
    # ...with any other filter it is refused, not a page of another listing.
    for other in (
        {},
        {"action": "prompt"},
        {"action": "prompt.create", "resource": "prompts"},
        {"action": "prompt.create", "actor": "system"},
        {"action": "prompt.create", "start_time": ts(datetime(2020, 1, 1, tzinfo=UTC))},
        {"action": "prompt.create", "end_time": ts(datetime(2100, 1, 1, tzinfo=UTC))},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListAuditEvents(
                apb.ListAuditEventsRequest(page_token=first.next_page_token, **other)
            )
        assert caught.value.code() == INVALID, other
        _, bad = error_details(caught.value)
        assert bad is not None and bad.field_violations[0].field == "page_token"
    # Tokens of other listings and bad filters are refused too.
    prompt_page = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(page_size=1))
    assert prompt_page.next_page_token
    bad_requests: list[tuple[apb.ListAuditEventsRequest, str]] = [
        (apb.ListAuditEventsRequest(page_token=prompt_page.next_page_token), "page_token"),
        (apb.ListAuditEventsRequest(page_token="not-a-token"), "page_token"),
        (apb.ListAuditEventsRequest(page_size=-1), "page_size"),
        (apb.ListAuditEventsRequest(resource="prompts/\x01"), "resource"),
        (apb.ListAuditEventsRequest(resource="prompts/"), "resource"),
        (apb.ListAuditEventsRequest(action="x" * 257), "action"),
        (apb.ListAuditEventsRequest(actor="a\x7fb"), "actor"),
        (
            apb.ListAuditEventsRequest(
                start_time=ts(datetime(2030, 1, 1, tzinfo=UTC)),
                end_time=ts(datetime(2029, 1, 1, tzinfo=UTC)),
            ),
            "start_time",
        ),
    ]
    for request, field in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListAuditEvents(request)
        assert caught.value.code() == INVALID, field
        _, bad = error_details(caught.value)
        assert bad is not None and field in [v.field for v in bad.field_violations]


async def test_page_size_is_capped(pg: Running) -> None:
    for i in range(205):
        await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name=f"many-{i}"))
    page = await admin(pg.channel).ListAuditEvents(apb.ListAuditEventsRequest(page_size=10_000))
    assert len(page.audit_events) == 200 and page.next_page_token
    default = await admin(pg.channel).ListAuditEvents(apb.ListAuditEventsRequest())
    assert len(default.audit_events) == 50


# Who may see what


async def test_workspaces_see_only_their_own_log(pg: Running) -> None:
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="shared-name"))
    default_ids = {e.id for e in await list_events(pg.channel)}
    assert await pg.server.keys.ensure_workspace("other")
    issued = await pg.server.keys.create(
        "other", name="other admin", scopes=[Scope.ADMIN], plan="unlimited"
    )
    async with authed_channel(pg.address, issued.secret) as other:
        await ppb_grpc.PromptServiceStub(other).CreatePrompt(
            ppb.CreatePromptRequest(name="shared-name")
        )
        seen = [plain(e) for e in await list_events(other)]
        assert [(e["action"], e["resource"], e["actor"]) for e in reversed(seen)] == [
            ("workspace.create", "workspaces/other", "system"),
            ("api_key.create", f"apiKeys/{issued.key.id}", "system"),
            ("prompt.create", "prompts/shared-name", issued.key.id),
        ]
        assert not {e.id for e in await list_events(other)} & default_ids
        assert await list_events(other, resource="prompts/demo") == []
        # A token of one workspace's listing pages nothing of the other's.
        await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="more"))
        first = await admin(pg.channel).ListAuditEvents(apb.ListAuditEventsRequest(page_size=1))
        rest = await admin(other).ListAuditEvents(
            apb.ListAuditEventsRequest(page_token=first.next_page_token)
        )
        assert {e.id for e in rest.audit_events} <= {
            e.id for e in await list_events(other)
        } and rest.audit_events
    # Its changes are not in the default workspace's log.
    assert {e.id for e in await list_events(pg.channel)} >= default_ids
    assert not [e for e in await list_events(pg.channel) if e.resource == "workspaces/other"]


async def test_only_admin_keys_list_the_log(pg: Running) -> None:
    for scope in ("prompt.execute", "template.manage", "analytics.read"):
        created = await new_key(pg.channel, scope)
        async with authed_channel(pg.address, created.secret) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin(channel).ListAuditEvents(apb.ListAuditEventsRequest())
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, scope
            assert error_details(caught.value)[0].reason == "INSUFFICIENT_PERMISSIONS"
    async with grpc.aio.insecure_channel(pg.address) as bare:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin(bare).ListAuditEvents(apb.ListAuditEventsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# What entries hold


async def test_keys_and_their_hashes_never_appear(pg: Running, tmp_path: Path) -> None:
    created = await new_key(pg.channel, "prompt.execute")
    await admin(pg.channel).RevokeApiKey(apb.RevokeApiKeyRequest(key_id=created.api_key.id))
    secret = created.secret.split(".", 1)[1]
    forbidden = {
        created.secret,
        secret,
        hashlib.sha256(secret.encode()).hexdigest(),
        pg.key,
        pg.key.split(".", 1)[1],
        hashlib.sha256(pg.key.split(".", 1)[1].encode()).hexdigest(),
    }
    response = await admin(pg.channel).ListAuditEvents(apb.ListAuditEventsRequest())
    listed = json_format.MessageToJson(response) + response.SerializeToString().decode("latin-1")
    assert [e.action for e in response.audit_events][:2] == ["api_key.revoke", "api_key.create"]
    # Nor are they stored: the rows themselves.
    database = pg.server.settings.database_url.split("///", 1)[1]
    with sqlite3.connect(database) as conn:
        stored = json.dumps(conn.execute("SELECT * FROM audit_events").fetchall())
    assert "api_key.create" in stored
    for value in forbidden:
        assert value not in listed
        assert value not in stored


async def test_large_values_are_cut_with_a_marker(pg: Running) -> None:
    labels = {f"label-{i:04d}": "x" * 60 for i in range(500)}
    await pg.prompts.CreatePrompt(
        ppb.CreatePromptRequest(name="huge", description="d" * 100_000, labels=labels)
    )
    (entry,) = await list_events(pg.channel, resource="prompts/huge")
    after = json_format.MessageToDict(entry.after)
    assert after["description"] == "d" * 1024 + "…[truncated]"
    kept = {k: v for k, v in after["labels"].items() if k != "…"}
    assert 0 < len(kept) < 500
    cut = [k for k, v in kept.items() if v != labels[k]]
    assert len(cut) <= 1
    assert all(
        kept[k].endswith("…[truncated]") and labels[k].startswith(kept[k][: -len("…[truncated]")])
        for k in cut
    )
    assert after["labels"]["…"] == f"[{500 - len(kept)} more]"
    assert len(json.dumps(after)) < 8_000


# Other actors and stores


async def _cli(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "promptgate", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, args
    return out.decode()


async def test_cli_changes_name_the_cli(start_server: Any, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    await _cli("workspaces", "create", "acme", "--database-url", database)
    out = await _cli(
        "keys",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "admin.manage",
        "--database-url",
        database,
    )
    secret = out.strip().splitlines()[-1]
    running: Running = await start_server(database_url=database, dev=False)
    async with authed_channel(running.address, secret) as channel:
        me = await key_id(channel)
        await ppb_grpc.PromptServiceStub(channel).CreatePrompt(
            ppb.CreatePromptRequest(name="from-api")
        )
        seen = [plain(e) for e in await list_events(channel)]
    assert [(e["action"], e["resource"], e["actor"]) for e in reversed(seen)] == [
        ("workspace.create", "workspaces/acme", "cli"),
        ("api_key.create", f"apiKeys/{me}", "cli"),
        ("prompt.create", "prompts/from-api", me),
    ]
    assert seen[-1]["after"] == {"name": "acme"}


@pytest.mark.postgres
async def test_audit_log_on_postgresql(start_server: Any, postgres_url: str) -> None:
    running: Running = await start_server(database_url=postgres_url)
    me = await key_id(running.channel)
    prompts = running.prompts
    await prompts.CreatePrompt(ppb.CreatePromptRequest(name="Mixed.Case"))
    # Concurrent versions: a version number lost to a race is retried, and the
    # entries of the attempts that rolled back are gone with them.
    await asyncio.gather(
        *(
            prompts.CreatePromptVersion(
                ppb.CreatePromptVersionRequest(
                    prompt="Mixed.Case", version=version_body(), release_tags=["production"]
                )
            )
            for _ in range(6)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await prompts.CreatePrompt(ppb.CreatePromptRequest(name="Mixed.Case"))
    versions = await list_events(
        running.channel, action="prompt_version", resource="prompts/Mixed.Case"
    )
    assert sorted(e.resource for e in versions) == sorted(
        f"prompts/Mixed.Case/versions/{n}" for n in range(1, 7)
    )
    assert {e.actor for e in versions} == {me}
    tags = await list_events(running.channel, resource="prompts/Mixed.Case/releaseTags")
    assert len(tags) == 6
    # Each move's "before" is the version the previous move left.
    moves = [
        (
            json_format.MessageToDict(e.before).get("version", 0) if e.HasField("before") else 0,
            json_format.MessageToDict(e.after)["version"],
        )
        for e in reversed(tags)
    ]
    assert [before for before, _ in moves] == [0] + [after for _, after in moves[:-1]]
    assert await list_events(running.channel, resource="prompts/mixed.case") == []
    assert len(await list_events(running.channel, action="prompt.create")) == 2  # demo too
    everything = await list_events(running.channel)
    assert [e.id for e in await list_events(running.channel, page_size=3)] == [
        e.id for e in everything
    ]
