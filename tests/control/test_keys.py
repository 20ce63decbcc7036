"""Key storage and comparison, and the refusal to start on a public address without keys."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestratord.auth import ApiKeys, KeyEntry, hash_key
from orchestratord.settings import ConfigError, load_settings
from tests.control.helpers import ACME_KEY, ADMIN_KEY, KEYS, assert_envelope, client
from tests.fakes.servers import REPO, LoopbackServer, free_port


def test_non_loopback_host_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(host="0.0.0.0")
    message = str(caught.value)
    assert "'0.0.0.0' is not a loopback address" in message
    assert "auth.allow_unauthenticated" in message and "auth.keys" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_keys(host: str) -> None:
    assert load_settings(host=host).host == host


def test_a_public_host_starts_with_keys_or_an_explicit_opt_out() -> None:
    assert load_settings(host="0.0.0.0", auth={"keys": KEYS}).auth.keys
    assert load_settings(host="10.1.2.3", auth={"allow_unauthenticated": True}).auth.allow_unauthenticated


def test_the_cli_exits_2_on_a_public_host_without_keys() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestratord", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no API keys are configured" in result.stderr
    assert "allow_unauthenticated" in result.stderr


def test_keys_are_stored_only_as_sha256_digests() -> None:
    settings = load_settings(auth={"keys": KEYS})
    dumped = settings.model_dump_json()
    assert ACME_KEY not in dumped and ADMIN_KEY not in dumped
    digests = {k.tenant: k.key_sha256 for k in settings.auth.keys}
    assert digests["acme"] == hashlib.sha256(ACME_KEY.encode()).hexdigest()
    assert digests["ops"] == hash_key(ADMIN_KEY)


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ([{"key": "short", "tenant": "a"}], "at least 16 characters"),
        ([{"key": ACME_KEY, "key_sha256": hash_key(ACME_KEY), "tenant": "a"}], "not both"),
        ([{"key_sha256": "abc", "tenant": "a"}], "auth.keys.0.key_sha256"),
        ([{"key": ACME_KEY, "tenant": "a", "role": "root"}], "auth.keys.0.role"),
        ([{"key": ACME_KEY, "tenant": "a"}, {"key": ACME_KEY, "tenant": "b"}], "more than once"),
    ],
)
def test_bad_keys_stop_start_up_without_echoing_the_key(keys: list[dict[str, str]], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(auth={"keys": keys})
    assert fragment in str(caught.value)
    assert ACME_KEY not in str(caught.value)


def test_a_keys_file_of_digests_authenticates(
    tmp_path: Path, make_server: Callable[..., LoopbackServer]
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(
        f"# digest tenant role\n\n{hash_key(ACME_KEY)} acme\n{hash_key(ADMIN_KEY).upper()} ops admin\n"
    )
    server = make_server(host="127.0.0.1", auth={"keys_file": str(keys_file)})
    with client(server, ACME_KEY) as acme, client(server, ADMIN_KEY) as admin, client(server) as nobody:
        assert acme.get("/v1/capabilities").status_code == 200
        assert_envelope(acme.get("/v1/catalog/models"), 403, "FORBIDDEN")
        assert admin.get("/v1/catalog/models").status_code == 200
        assert_envelope(nobody.get("/v1/capabilities"), 401, "UNAUTHORIZED")


def test_a_bad_keys_file_names_the_file_and_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{hash_key(ACME_KEY)} acme\nnot-a-line-of-the-format\n")
    with pytest.raises(ConfigError, match=r"keys.txt line 2"):
        load_settings(auth={"keys_file": str(keys_file)})
    with pytest.raises(ConfigError, match="cannot read keys_file"):
        load_settings(auth={"keys_file": str(tmp_path / "missing.txt")})


def test_every_stored_digest_is_compared_in_constant_time_whatever_matches() -> None:
    """No early exit: the presented key is compared with every stored digest, with compare_digest."""
    assert inspect.signature(ApiKeys).parameters["compare"].default is hmac.compare_digest
    secrets = [f"key-number-{i}-0123456789abcdef" for i in range(5)]
    calls: list[tuple[bytes, bytes]] = []

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    keys = ApiKeys(
        [KeyEntry(hashlib.sha256(s.encode()).digest(), f"t{i}", "client") for i, s in enumerate(secrets)],
        compare=counting,
    )
    for presented, tenant in [(secrets[0], "t0"), (secrets[4], "t4"), ("unknown-key-0123456789", None)]:
        calls.clear()
        found = keys.authenticate(presented)
        assert (found.tenant if found else None) == tenant
        assert len(calls) == len(secrets), "every digest is compared, whichever matched"
        assert all(b == hashlib.sha256(presented.encode()).digest() for _, b in calls)
