"""Valid and invalid configurations, each with the message an integrator sees."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncengine.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

VALID = textwrap.dedent(
    """
    state: {url: "sqlite:///tmp/x.db"}
    connections:
      goose: {type: goose, url: "http://127.0.0.1:8701/deleted/", code: DEV001,
              key: "${GOOSE_KEY}", timezone: Europe/Rome}
      erp: {type: mongoose, url: "http://127.0.0.1:8702/IDORequestService/MGRESTService.svc",
            config: DEMO, user: sync, password: "${MONGOOSE_PASSWORD:-fallback-pw}"}
    pipelines:
      contacts:
        schedule: {every: 60s}
        source: {connection: goose, tables: [CON_TRO], from: latest, imc: false}
        targets:
          erp_users: {connection: erp, ido: UserNames, key: "{SYKEY}",
                      lookup: {property: Username}, batch_size: 100}
    """
)
ENV = {"GOOSE_KEY": "goose-secret-key-123"}


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml", ENV if env is None else env)
    return [issue.render("my.yaml") for issue in info.value.issues]


def test_valid_config_builds_typed_models() -> None:
    config = parse_config(VALID, "my.yaml", ENV)
    pipe = config.pipelines["contacts"]
    assert pipe.schedule.every == 60
    assert pipe.source.connection_type == "goose"
    assert pipe.source.settings.tables == ["CON_TRO"]
    target = pipe.targets["erp_users"]
    assert target.connection_type == "mongoose"
    assert target.settings.batch_size == 100
    assert target.retry.max_attempts == 10
    goose = config.connections["goose"]
    assert goose.key.get_secret_value() == "goose-secret-key-123"
    assert "goose-secret-key-123" not in repr(goose)
    assert set(config.secrets) == {"goose-secret-key-123", "fallback-pw"}


def test_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "config.yaml", env={})
    assert set(config.pipelines) == {"contacts", "people", "employees", "sites", "crm_deletions"}
    people = config.pipelines["people"].source
    assert people.chain is not None and people.chain.describe() == "contacts/mdm_people"


INVALID = [
    (
        "unknown connection",
        VALID.replace("connection: erp,", "connection: erpp,"),
        "pipelines.contacts.targets.erp_users.connection: "
        "no connection of that name; defined: erp, goose",
    ),
    (
        "unknown type",
        VALID.replace("type: mongoose", "type: mongo"),
        "connections.erp.type: unknown connection type; known: adt, dmm, goose,",
    ),
    (
        "wrong role",
        VALID.replace("source: {connection: goose,", "source: {connection: erp,"),
        "connection 'erp' is of type mongoose, which cannot be a source",
    ),
    (
        "misspelt key",
        VALID.replace("imc: false", "imcc: false"),
        "pipelines.contacts.source.imcc: unknown key 'imcc'",
    ),
    (
        "bad schedule",
        VALID.replace("{every: 60s}", "{cron: '61 * * * *'}"),
        "pipelines.contacts.schedule.cron: bad cron expression",
    ),
    (
        "no schedule kind",
        VALID.replace("{every: 60s}", "{}"),
        "set exactly one of 'every'",
    ),
    (
        "bad duration",
        VALID.replace("{every: 60s}", "{every: soon}"),
        "pipelines.contacts.schedule.every: this value is not a duration",
    ),
    (
        "wrong value type",
        VALID.replace("batch_size: 100", "batch_size: many"),
        "pipelines.contacts.targets.erp_users.batch_size:",
    ),
    (
        "no targets",
        VALID.split("    targets:")[0] + "    targets: {}\n",
        "pipelines.contacts.targets:",
    ),
    ("not a mapping", "- a\n- b\n", "must be a mapping"),
    ("not yaml", "connections: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize(("case", "text", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_configs_name_the_path(case: str, text: str, expected: str) -> None:
    messages = issues_of(text)
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("my.yaml") for m in messages)


def test_missing_variable_is_named_with_its_path_and_line() -> None:
    messages = issues_of(VALID, env={})
    assert len(messages) == 1
    assert "connections.goose.key" in messages[0]
    assert "GOOSE_KEY is not set" in messages[0]
    assert messages[0].startswith("my.yaml:5:"), "the line of the key"


def test_default_applies_when_variable_missing() -> None:
    config = parse_config(VALID, "my.yaml", ENV)
    assert config.connections["erp"].password.get_secret_value() == "fallback-pw"


def test_variable_value_cannot_change_structure() -> None:
    sneaky = {"GOOSE_KEY": "x\nstate: {url: 'sqlite:///evil.db'}"}
    config = parse_config(VALID, "my.yaml", sneaky)
    assert config.state.url == f"sqlite:///{Path('my.yaml').resolve().parent / 'tmp' / 'x.db'}"
    assert config.connections["goose"].key.get_secret_value() == sneaky["GOOSE_KEY"]


def test_dollar_escape() -> None:
    config = parse_config(VALID.replace("${GOOSE_KEY}", "a$$b"), "my.yaml", {})
    assert config.connections["goose"].key.get_secret_value() == "a$b"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


CHAINED = VALID + textwrap.indent(
    textwrap.dedent(
        """
        downstream:
          schedule: {every: 60s}
          source: {pipeline: contacts, target: erp_users}
          targets:
            erp_again: {connection: erp, ido: SLEmployees, key: "{SYKEY}"}
        third:
          schedule: {every: 60s}
          source: {pipeline: downstream, target: erp_again}
          targets:
            erp_more: {connection: erp, ido: Other, key: "{SYKEY}"}
        """
    ),
    "  ",
)


def test_a_chained_source_reads_another_pipelines_target() -> None:
    from syncengine.config.loader import run_order

    config = parse_config(CHAINED, "my.yaml", ENV)
    source = config.pipelines["downstream"].source
    assert source.chain is not None and source.chain.describe() == "contacts/erp_users"
    assert source.connection is None and source.describe() == "contacts/erp_users (chained)"
    reordered = {"third": config.pipelines["third"], **config.pipelines}
    assert run_order(reordered) == ["contacts", "downstream", "third"]


CHAIN_INVALID = [
    (
        "unknown upstream pipeline",
        CHAINED.replace("{pipeline: contacts,", "{pipeline: contactz,"),
        "pipelines.downstream.source.pipeline: no pipeline named 'contactz'; defined: contacts,",
    ),
    (
        "unknown upstream target",
        CHAINED.replace("target: erp_users}", "target: erp_userz}"),
        "pipelines.downstream.source.target: pipeline contacts has no target 'erp_userz'; "
        "its targets: erp_users",
    ),
    (
        "chain and connection",
        CHAINED.replace("{pipeline: contacts,", "{connection: goose, pipeline: contacts,"),
        "pipelines.downstream.source.connection: a chained source reads another pipeline's",
    ),
    (
        "chain with settings",
        CHAINED.replace("target: erp_users}", "target: erp_users, tables: [X]}"),
        "a chained source takes only 'pipeline' and 'target'; remove tables",
    ),
    (
        "chain without target",
        CHAINED.replace("{pipeline: contacts, target: erp_users}", "{pipeline: contacts}"),
        "pipelines.downstream.source.target: required key is missing",
    ),
    (
        "own target",
        CHAINED.replace("{pipeline: downstream, target: erp_again}", "{pipeline: third, "
                        "target: erp_more}"),
        "pipelines.third.source.pipeline: a pipeline cannot read its own target",
    ),
    (
        "loop",
        CHAINED.replace("{pipeline: contacts, target: erp_users}", "{pipeline: third, "
                        "target: erp_more}"),
        "pipelines read each other in a loop: ",
    ),
    (
        "neither",
        VALID.replace("source: {connection: goose, tables: [CON_TRO], from: latest, imc: false}",
                      "source: {tables: [CON_TRO]}"),
        "pipelines.contacts.source.connection: required: a connection to read deletions from",
    ),
    (
        "following its own target",
        VALID.replace("imc: false}", "imc: false, follow_jobs_of: {pipeline: contacts, "
                      "target: erp_users}}"),
        "pipelines.contacts.source.follow_jobs_of.pipeline: a pipeline cannot read its own",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "text", "expected"), CHAIN_INVALID, ids=[c[0] for c in CHAIN_INVALID]
)
def test_invalid_chains_name_the_path(case: str, text: str, expected: str) -> None:
    messages = issues_of(text)
    assert any(expected in m for m in messages), messages


def test_following_jobs_needs_a_task_source_on_the_same_connection() -> None:
    text = CHAINED.replace(
        "source: {pipeline: contacts, target: erp_users}",
        "source: {connection: goose, tables: [X], follow_jobs_of: {pipeline: contacts, "
        "target: erp_users}}",
    )
    messages = issues_of(text)
    assert any(
        "follow_jobs_of: contacts/erp_users deletes through connection 'erp', but this source "
        "reads 'goose'" in m
        for m in messages
    ), messages


def test_following_jobs_needs_a_source_that_reads_tasks() -> None:
    text = CHAINED.replace(
        "source: {pipeline: contacts, target: erp_users}",
        "source: {connection: goose, tables: [X], follow_jobs_of: {pipeline: third, target: back}}",
    ).replace(
        'erp_more: {connection: erp, ido: Other, key: "{SYKEY}"}',
        'back: {connection: goose, table: CON_TRO, id: "{RECORD_ID}"}',
    )
    messages = issues_of(text)
    assert any("a goose source reads no tasks, so it cannot follow jobs" in m for m in messages), (
        messages
    )


TWO_GUARDS = VALID.replace(
    "lookup: {property: Username}, batch_size: 100}",
    "lookup: {property: Username}, batch_size: 100,\n"
    "                      guard: {legal_hold: {key: '{SYKEY}', patterns: [ceo]}},\n"
    "                      guard: {max_per_run: 50}}",
)


def test_a_repeated_key_is_an_error_naming_both_lines() -> None:
    """A second `guard:` would silently replace the first, dropping its legal hold."""
    messages = issues_of(TWO_GUARDS)
    assert messages == [
        "my.yaml:16: pipelines.contacts.targets.erp_users.guard: key 'guard' is written twice, "
        "at lines 15 and 16; YAML would keep only the second, so merge them into one"
    ]


def test_a_repeated_key_in_block_style_at_the_top_level() -> None:
    text = VALID + 'state: {url: "sqlite:///tmp/other.db"}\n'
    messages = issues_of(text)
    assert len(messages) == 1
    assert messages[0].startswith(
        "my.yaml:15: state: key 'state' is written twice, at lines 2 and 15"
    )


def test_a_merge_key_may_still_be_overridden() -> None:
    """`<<:` brings defaults that the mapping's own keys override, as YAML intends."""
    merged = VALID.replace("schedule: {every: 60s}", "schedule: {<<: {every: 30s}, every: 60s}")
    assert parse_config(merged, "my.yaml", ENV).pipelines["contacts"].schedule.every == 60


def test_the_project_yaml_loader_refuses_repeated_keys() -> None:
    from syncengine.config import yamlfile

    with pytest.raises(yamlfile.RepeatedKeyError, match="key 'a' repeated"):
        yamlfile.load("x:\n  a: 1\n  b: 2\n  a: 3\n")
    assert yamlfile.load("base: &b {a: 1}\nx: {<<: *b, a: 2}\n") == {
        "base": {"a": 1},
        "x": {"a": 2},
    }


SECOND_READER = (
    VALID
    + textwrap.indent(
        textwrap.dedent(
            """
        contacts_copy:
          schedule: {every: 60s}
          source: {connection: goose2, tables: [CON_TRO], from: latest}
          targets:
            erp_again: {connection: erp, ido: SLEmployees, key: "{SYKEY}"}
        """
        ),
        "  ",
    )
).replace(
    "\npipelines:\n",
    '\n  goose2: {type: goose, url: "http://127.0.0.1:8701/deleted", code: DEV001,\n'
    '           key: "${GOOSE_KEY}"}\npipelines:\n',
)


def test_two_pipelines_on_one_goose_latest_cursor_are_refused() -> None:
    """Goose keeps one `latest` cursor per company, key and table: a second reader would
    get nothing, forever, with outcome ok (here through a second name for the same
    service, its url without the trailing slash)."""
    messages = issues_of(SECOND_READER)
    assert len(messages) == 1, messages
    assert messages[0].startswith(
        "my.yaml:20: pipelines.contacts_copy.source: pipelines contacts and contacts_copy both "
        "read Goose's `latest` cursor of table CON_TRO for company DEV001"
    ), messages
    assert (
        "one pipeline with several targets, or read by timestamp with `from: watermark`"
        in (messages[0])
    )
    assert "goose-secret-key-123" not in messages[0]


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("other table", ("tables: [CON_TRO], from: latest}", "tables: [CON_TR2], from: latest}")),
        ("timestamp reads", ("[CON_TRO], from: latest}", "[CON_TRO], from: watermark}")),
        ("other key", ('key: "${GOOSE_KEY}"}\npipelines', 'key: "another-key-456"}\npipelines')),
        ("other company", ('deleted", code: DEV001', 'deleted", code: DEV002')),
    ],
)  # fmt: skip
def test_server_cursors_that_differ_may_have_a_reader_each(
    case: str, change: tuple[str, str]
) -> None:
    assert change[0] in SECOND_READER
    config = parse_config(SECOND_READER.replace(*change), "my.yaml", ENV)
    assert set(config.pipelines) == {"contacts", "contacts_copy"}


def test_a_secret_shorter_than_8_characters_is_a_warning_naming_its_path() -> None:
    config = parse_config(VALID, "my.yaml", {"GOOSE_KEY": "k3y"})
    assert config.warnings == (
        "my.yaml:5: connections.goose.key: this secret is 3 characters long; one shorter than "
        "8 cannot be scrubbed reliably from logs and errors (its base64 form is too short to "
        "look for), so use a longer one if the service allows it",
    )
    assert parse_config(VALID, "my.yaml", ENV).warnings == ()


COUNTING = VALID.replace(
    "  erp: {type: mongoose,",
    """  crm: {type: dmm, url: "http://127.0.0.1:8705/DMM_API/rest/DMMAPI", token: t, otp: o}
  mdm: {type: reltio, tenant_url: "http://127.0.0.1:8703/reltio/api/T",
        auth_url: "http://127.0.0.1:8703/oauth/token", client_id: c, client_secret: s}
  erp: {type: mongoose,""",
)


@pytest.mark.parametrize(
    ("kind", "block"),
    [
        (
            "dmm",
            "crm_customers: {connection: crm, entity: {name: Customer}, key_attribute: ExternalId,"
            ' key: "{RECORD_ID}", guard: {max_fraction: 0.5}}',
        ),
        (
            "goose",
            'back: {connection: goose, table: CON_TRO, id: "{RECORD_ID}", '
            "guard: {max_fraction: 0.5}}",
        ),
    ],
)
def test_max_fraction_is_refused_where_the_target_cannot_count(kind: str, block: str) -> None:
    text = COUNTING + f"      {block}\n"
    name = block.split(":")[0]
    messages = issues_of(text)
    assert messages == [
        f"my.yaml:{text.splitlines().index(f'      {block}') + 1}: "
        f"pipelines.contacts.targets.{name}.guard.max_fraction: a {kind} target cannot count "
        "its records, so max_fraction cannot guard it; max_fraction works on targets of type "
        "mongoose, reltio; use max_per_run or max_per_hour here"
    ]


def test_max_fraction_is_accepted_where_the_target_counts() -> None:
    text = COUNTING + (
        '      mdm_people: {connection: mdm, crosswalk: {type: GOOSE, value: "{RECORD_ID}"},'
        " guard: {max_fraction: 0.1}}\n"
    )
    text = text.replace("batch_size: 100}", "batch_size: 100, guard: {max_fraction: 0.5}}")
    config = parse_config(text, "my.yaml", ENV)
    guards = {n: t.guard.max_fraction for n, t in config.pipelines["contacts"].targets.items()}
    assert guards == {"erp_users": 0.5, "mdm_people": 0.1}


def test_a_name_ending_in_a_newline_is_refused() -> None:
    """`$` matches before a final newline; names are matched whole."""
    text = VALID.replace("  contacts:\n", '  "contacts\\n":\n', 1)
    assert any("pipeline name" in m for m in issues_of(text)), issues_of(text)


@pytest.mark.parametrize(
    ("written", "misspelt", "meant"),
    [
        # A target block takes its connector's keys too, so only the missing key showed.
        (
            "erp_users: {connection: erp,",
            "pipelines.contacts.targets.erp_users.conection",
            "connection",
        ),
        ("schedule: {every: 60s}", "pipelines.contacts.schedul", "schedule"),
    ],
)
def test_misspelt_required_key_is_named_once_with_its_near_name(
    written: str, misspelt: str, meant: str
) -> None:
    wrong = written.replace(meant, misspelt.rsplit(".", 1)[1], 1)
    issues = issues_of(VALID.replace(written, wrong))
    assert issues == [
        f"my.yaml:{_line_of(VALID, written)}: {misspelt}: unknown key "
        f"{misspelt.rsplit('.', 1)[1]!r}; did you mean {meant!r}?"
    ]


def test_misspelt_optional_key_suggests_the_near_name() -> None:
    issues = issues_of(VALID.replace("batch_size: 100", "bach_size: 100"))
    assert issues == [
        f"my.yaml:{_line_of(VALID, 'batch_size: 100')}: "
        "pipelines.contacts.targets.erp_users.bach_size: unknown key 'bach_size'; "
        "did you mean 'batch_size'?"
    ]


def _line_of(text: str, part: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if part in line)
