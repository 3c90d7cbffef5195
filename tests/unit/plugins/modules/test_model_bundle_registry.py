# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""model_bundle_push, model_bundle_pull and model_stage: their arguments, the bundle image
built and unpacked with the real podman of this machine, and pulls over real HTTP from a server
on 127.0.0.1 that serves a real bundle image's manifest and blobs (what a pull reads of a
registry; model_stage's image pulls are the real podman's, from the same server). Pushing to
and pulling from real registries, on real lab hosts: tests/e2e/test_bundle_delivery.py."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import shutil
import ssl
import tarfile
import threading
import urllib.parse
import uuid
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_registry as registry
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import file_differences
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import bundle_files
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.modules import model_bundle_pull, model_bundle_push, model_stage
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def bundle(digits_bundle) -> Path:
    return digits_bundle


def test_differences_name_changed_added_and_missing_files():
    expected = {"model.json": "a", "model.onnx": "b", "profile.json": "c"}
    actual = {"model.json": "a", "model.onnx": "x", "extra.txt": "d"}
    assert file_differences(expected, actual) == ["model.onnx changed", "extra.txt added", "profile.json missing"]
    assert file_differences(expected, dict(expected)) == []


def test_the_same_bundle_always_makes_the_same_image_and_it_unpacks_to_the_verified_files(bundle, podman, tmp_path):
    client, tags = podman
    files = bundle_files(str(bundle), {})
    tag = f"localhost/edgeml-test-bundles/digits-{uuid.uuid4().hex[:8]}:1.0.0"
    tags.append(tag)
    first = registry.build_bundle_image(client, str(bundle), files, tag)
    for path in bundle.rglob("*"):  # new modification times, same content
        path.touch()
    assert registry.build_bundle_image(client, str(bundle), files, tag) == first
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    registry.unpack_bundle_image(client, tag, str(unpacked))
    assert bundle_files(str(unpacked), {}) == files
    # Another content makes another image: a tag holding it is told apart by the ID.
    (bundle / "model.json").write_text((bundle / "model.json").read_text() + " ")
    other = f"{tag}-other"
    tags.append(other)
    assert registry.build_bundle_image(client, str(bundle), bundle_files(str(bundle), {}), other) != first


def test_a_bundle_changed_after_it_was_verified_is_not_built(bundle, podman):
    client, _tags = podman
    files = bundle_files(str(bundle), {})
    (bundle / "model.json").unlink()
    (bundle / "labels.txt").write_text("0 1 2")
    with pytest.raises(EdgeMLError, match=r"changed after it was verified: labels\.txt added, model\.json missing"):
        registry.build_bundle_image(client, str(bundle), files, "localhost/edgeml-test-bundles/never:1")


def test_push_needs_a_registry(bundle, capsys):
    result = models.run_module(
        model_bundle_push.main,
        dict(
            path=str(bundle),
            files={"model.json": "a"},
            repository="edgeml-bundles/digits",
            version="1.0.0",
            registries=[],
        ),
        capsys,
    )
    assert result["failed"] and "No registry to push the bundle to" in result["msg"]


@pytest.mark.parametrize(
    ("ref", "files", "message"),
    [
        ("registry.example:5000/edgeml-bundles/digits:1.0.0", {"model.json": "a"}, "is not pinned by digest"),
        (f"registry.example:5000/edgeml-bundles/digits@{DIGEST}", {}, "files is empty"),
    ],
)
def test_pull_refuses_a_tag_or_nothing_to_check_against(tmp_path, capsys, ref, files, message):
    dest = tmp_path / "bundles" / "digits" / "1.0.0"
    result = models.run_module(model_bundle_pull.main, dict(ref=ref, dest=str(dest), files=files), capsys)
    assert result["failed"] and message in result["msg"]
    assert not dest.exists()


def test_pull_does_nothing_when_the_host_holds_the_verified_bundle(bundle, capsys):
    """Nothing is pulled (the registry named does not exist: a pull would fail)."""
    ref = f"registry.invalid:5000/edgeml-bundles/digits@{DIGEST}"
    files = bundle_files(str(bundle), {})
    for check in (True, False):
        args = dict(ref=ref, dest=str(bundle), files=files, _ansible_check_mode=check)
        result = models.run_module(model_bundle_pull.main, args, capsys)
        assert result["changed"] is False and not result.get("failed"), result


def test_pull_in_check_mode_says_what_differs_and_changes_nothing(bundle, capsys):
    files = bundle_files(str(bundle), {})
    (bundle / "model.onnx").write_bytes(b"not the model")
    before = bundle_files(str(bundle), {})
    ref = f"registry.invalid:5000/edgeml-bundles/digits@{DIGEST}"
    args = dict(ref=ref, dest=str(bundle), files=files, _ansible_check_mode=True)
    result = models.run_module(model_bundle_pull.main, args, capsys)
    assert result["changed"] is True and result["changes"] == ["model.onnx changed"]
    assert bundle_files(str(bundle), {}) == before


# --- pulling over the registry's HTTP API -------------------------------------------------------
# The registry here is a real HTTP server on 127.0.0.1 serving the manifest and blobs of a real
# bundle image, as `podman save --format oci-dir` writes them (the distribution API's two GETs a
# pull makes). A real registry (the lab's, podman pushing to it): tests/e2e/test_bundle_delivery.py.


class OCIRegistry:
    """The distribution API's pull and push on BLOBS (digest -> bytes): GET and HEAD of
    manifests (by digest or tag) and blobs; an upload started with POST (answered with an
    absolute Location, or a RELATIVE one) and finished with one PUT, refused unless the bytes
    hash to its digest; a manifest PUT under a tag, refused unless the registry holds every
    blob it names and its Content-Type is its mediaType (as the reference registry does).
    TOKEN, when set: a Bearer token from /token, for the scope asked there (a challenge names
    none); POST and PUT need one whose scope has push. TLS, when set: HTTPS with that context."""

    def __init__(
        self,
        blobs: dict[str, bytes] | None = None,
        token: str | None = None,
        relative: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.blobs = dict(blobs or {})
        self.tags: dict[str, str] = {}  # REPOSITORY:TAG -> manifest digest
        self.token = token
        self.relative = relative
        self.requests: list[str] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                registry.requests.append(self.path)
                self.serve(with_body=True)

            def do_HEAD(self):
                registry.requests.append(f"HEAD {self.path}")
                self.serve(with_body=False)

            def do_POST(self):
                registry.requests.append(f"POST {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.authorized(push=True):
                    return None
                # With a query of its own, as the reference registry answers; absolute as it
                # does, or relative to the request.
                upload = f"{uuid.uuid4().hex}?_state=unit"
                location = upload if registry.relative else f"http://{registry.address}{self.path}{upload}"
                return self.answer(202, b"", {"Location": location})

            def do_PUT(self):
                registry.requests.append(f"PUT {self.path}")
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not self.authorized(push=True):
                    return None
                path, _sep, query = self.path.partition("?")
                if "/blobs/uploads/" in path:
                    digest = urllib.parse.parse_qs(query)["digest"][0]
                    if sha256_of(body) != digest:
                        return self.answer(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                    registry.blobs[digest] = body
                    return self.answer(201, b"", {"Docker-Content-Digest": digest})
                repository, _sep, tag = path.removeprefix("/v2/").partition("/manifests/")
                manifest = json.loads(body)
                named = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
                if any(digest not in registry.blobs for digest in named):
                    return self.answer(400, b'{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}')
                if self.headers.get("Content-Type") != manifest.get("mediaType"):
                    return self.answer(400, b'{"errors":[{"code":"MANIFEST_INVALID"}]}')
                registry.blobs[sha256_of(body)] = body
                registry.tags[f"{repository}:{tag}"] = sha256_of(body)
                return self.answer(201, b"", {"Docker-Content-Digest": sha256_of(body)})

            def serve(self, with_body: bool):
                if self.path == "/v2/":  # the API check a podman pull starts with
                    return self.answer(200, b"{}")
                if self.path.startswith("/token"):
                    scope = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["scope"][0]
                    return self.answer(200, json.dumps({"token": f"{registry.token} {scope}"}).encode())
                if not self.authorized():
                    return None
                repository, _sep, reference = self.path.removeprefix("/v2/").rpartition("/")
                repository = repository.rsplit("/", 1)[0]
                digest = registry.tags.get(f"{repository}:{reference}", reference)
                if digest not in registry.blobs:
                    return self.answer(404, b"{}")
                headers = {"Docker-Content-Digest": digest}
                if "/manifests/" in self.path:  # as a registry says it (podman reads the type from it)
                    headers["Content-Type"] = "application/vnd.oci.image.manifest.v1+json"
                return self.answer(200, registry.blobs[digest], headers, with_body)

            def authorized(self, push: bool = False) -> bool:
                given, prefix = self.headers.get("Authorization") or "", f"Bearer {registry.token} "
                scope = given[len(prefix):] if given.startswith(prefix) else ""
                if registry.token and (not scope or (push and not scope.endswith(":pull,push"))):
                    realm = f"http://{registry.address}/token"
                    self.answer(401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}",service="unit"'})
                    return False
                return True

            def answer(self, status, body, headers=None, with_body=True):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # HTTPS (TLS: a server-side context, which may require client certificates)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def saved_image(client, tag: str, into: Path) -> tuple[str, dict[str, bytes]]:
    """(manifest digest, digest -> bytes) of TAG saved as an OCI directory (its layer a tar)."""
    client.run("save", "--format", "oci-dir", "-o", str(into), tag)
    index = json.loads((into / "index.json").read_text())
    blobs = {f"sha256:{path.name}": path.read_bytes() for path in (into / "blobs" / "sha256").iterdir()}
    return index["manifests"][0]["digest"], blobs


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_of(blobs: dict[str, bytes], manifest_digest: str) -> dict:
    return json.loads(blobs[manifest_digest])["layers"][0]


def tar_layer(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in entries:
            info.size = len(data or b"")
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"


def with_layer(
    blobs: dict[str, bytes], manifest_digest: str, layer: bytes, media_type: str = TAR_LAYER
) -> tuple[str, dict[str, bytes]]:
    """The image with its layer replaced by LAYER, under a new manifest digest."""
    manifest = json.loads(blobs[manifest_digest])
    replaced = {"mediaType": media_type, "digest": sha256_of(layer), "size": len(layer)}
    manifest["layers"] = [{**manifest["layers"][0], **replaced}]
    body = json.dumps(manifest).encode()
    return sha256_of(body), {**blobs, sha256_of(layer): layer, sha256_of(body): body}


@pytest.fixture
def bundle_image(bundle, podman, tmp_path):
    """(files, the bundle image saved: compress -> (manifest digest, blobs))."""
    client, tags = podman
    files = bundle_files(str(bundle), {})
    tag = f"localhost/edgeml-test-bundles/digits-{uuid.uuid4().hex[:8]}:1.0.0"
    tags.append(tag)
    registry.build_bundle_image(client, str(bundle), files, tag)
    digest, blobs = saved_image(client, tag, tmp_path / "oci")
    # podman saves (and pushes) the layer gzip-compressed; a registry may hold it as a plain tar.
    assert layer_of(blobs, digest)["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    plain = with_layer(blobs, digest, gzip.decompress(blobs[layer_of(blobs, digest)["digest"]]))
    return files, {True: (digest, blobs), False: plain}


def pull(capsys, served: OCIRegistry, digest: str, dest: Path, files: dict, **extra) -> dict:
    ref = f"{served.address}/edgeml-bundles/digits@{digest}"
    args = {"ref": ref, "dest": str(dest), "files": files, "tls_verify": False, **extra}
    return models.run_module(model_bundle_pull.main, args, capsys)


@pytest.mark.parametrize("compress", [True, False], ids=["tar+gzip", "tar"])
def test_pull_streams_the_layer_into_place_and_then_has_nothing_to_do(bundle_image, tmp_path, capsys, compress):
    files, saved = bundle_image
    digest, blobs = saved[compress]
    assert layer_of(blobs, digest)["mediaType"].endswith("+gzip") is compress
    served = OCIRegistry(blobs)
    dest = tmp_path / "host" / "digits" / "1.0.0"
    result = pull(capsys, served, digest, dest, files)
    assert not result.get("failed") and result["changed"] is True, result
    assert bundle_files(str(dest), {}) == files
    assert {oct(path.stat().st_mode & 0o777) for path in dest.rglob("*") if path.is_file()} == {"0o644"}
    assert not [path for path in dest.parent.iterdir() if path.name.startswith(".")], "a staging directory was left"
    fetched = len(served.requests)
    again = pull(capsys, served, digest, dest, files)
    assert again["changed"] is False and len(served.requests) == fetched, "a second run fetched something"


def test_pull_with_a_token_the_registry_hands_out(bundle_image, tmp_path, capsys):
    files, saved = bundle_image
    digest, blobs = saved[True]
    served = OCIRegistry(blobs, token="unit-token")
    result = pull(capsys, served, digest, tmp_path / "digits" / "1.0.0", files)
    assert not result.get("failed") and result["changed"] is True, result
    assert any(path.startswith("/token?") and "scope=repository%3Aedgeml-bundles%2Fdigits%3Apull" in path
               for path in served.requests), served.requests


def write_tls_pki(directory: Path) -> dict[str, Path]:
    """A CA (site-ca.crt), a server certificate for 127.0.0.1 (server.crt, server.key) and a
    client certificate (fleet.cert, fleet.key), both issued by that CA: the paths, by name."""
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

    directory.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = models.issue_certificate(
        "site registry CA", ca_key, None, [x509.BasicConstraints(ca=True, path_length=None)]
    )
    ca = (ca_certificate, ca_key)
    paths = {"ca": directory / "site-ca.crt"}
    paths["ca"].write_bytes(ca_certificate.public_bytes(pem))
    leaves = {
        "server.crt": [
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
        "fleet.cert": [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    }
    for filename, extensions in leaves.items():
        name = filename.split(".")[0]
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = models.issue_certificate(name, key, ca, [x509.BasicConstraints(ca=False, path_length=None), *extensions])
        paths[name] = directory / filename
        paths[name].write_bytes(leaf.public_bytes(pem))
        paths[f"{name}_key"] = directory / f"{name}.key"
        paths[f"{name}_key"].write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return paths


def test_pull_over_tls_with_the_ca_files_and_client_certificate_podman_would_use(
    bundle_image, tmp_path, capsys, monkeypatch
):
    """A registry on 127.0.0.1 over real TLS, with a certificate from a private CA, that
    requires a client certificate: the pull trusts and presents what podman would, from the
    registry's certs.d directory (the user's ~/.config/containers/certs.d here): a CA file of
    any NAME.crt, a client certificate NAME.cert with its NAME.key."""
    files, saved = bundle_image
    digest, blobs = saved[False]
    pki = write_tls_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server_key"])
    context.load_verify_locations(pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    served = OCIRegistry(blobs, tls=context)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    certs = tmp_path / "home" / ".config" / "containers" / "certs.d" / served.address
    certs.mkdir(parents=True)
    dest = tmp_path / "host" / "digits" / "1.0.0"

    # Nothing in certs.d: the registry's certificate is not trusted.
    refused = pull(capsys, served, digest, dest, files, tls_verify=True)
    assert refused.get("failed") and "CERTIFICATE_VERIFY_FAILED" in refused["msg"], refused
    # The CA (not named ca.crt): trusted, but the registry wants a client certificate.
    shutil.copy(pki["ca"], certs / "site-ca.crt")
    refused = pull(capsys, served, digest, dest, files, tls_verify=True)
    assert refused.get("failed") and f"The registry {served.address} did not answer" in refused["msg"], refused
    assert not dest.exists() and not served.requests, "a request got through without a client certificate"
    # A key without its certificate: refused as podman refuses it, before any request.
    shutil.copy(pki["fleet_key"], certs / "fleet.key")
    refused = pull(capsys, served, digest, dest, files, tls_verify=True)
    assert refused.get("failed") and f"{certs / 'fleet.key'} has no fleet.cert beside it" in refused["msg"], refused
    # The pair: pulled, over TLS, with the client certificate.
    shutil.copy(pki["fleet"], certs / "fleet.cert")
    result = pull(capsys, served, digest, dest, files, tls_verify=True)
    assert not result.get("failed") and result["changed"] is True, result
    assert bundle_files(str(dest), {}) == files and served.requests


def refused_and_untouched(result: dict, dest: Path, before: dict, message: str) -> None:
    assert result.get("failed") and message in result["msg"], result
    assert "Nothing on this host was changed" in result["msg"]
    assert bundle_files(str(dest), {}) == before
    assert not [path for path in dest.parent.iterdir() if path.name.startswith(".")], "a staging directory was left"


@pytest.fixture
def old_copy(tmp_path) -> tuple[Path, dict]:
    """The host's copy of the bundle before the pull: another build, which must survive a refusal."""
    dest = tmp_path / "host" / "digits" / "1.0.0"
    dest.mkdir(parents=True)
    (dest / "model.json").write_text("{}")
    return dest, bundle_files(str(dest), {})


def test_a_layer_that_is_not_what_the_manifest_names_is_refused(bundle_image, old_copy, capsys):
    """The same files in a tar written anew: every file is right, the blob is not the pinned one."""
    files, saved = bundle_image
    digest, blobs = saved[False]
    layer = layer_of(blobs, digest)
    original = tarfile.open(fileobj=io.BytesIO(blobs[layer["digest"]]))
    members = [(member, original.extractfile(member).read() if member.isfile() else None) for member in original]
    for member, _data in members:
        member.mtime += 1
    served = OCIRegistry({**blobs, layer["digest"]: tar_layer(members)})
    dest, before = old_copy
    refused_and_untouched(pull(capsys, served, digest, dest, files), dest, before, "served other content for the layer")


def test_a_manifest_that_does_not_hash_to_the_pinned_digest_is_refused(bundle_image, old_copy, capsys):
    files, saved = bundle_image
    digest, blobs = saved[False]
    served = OCIRegistry({**blobs, digest: blobs[digest] + b" "})
    dest, before = old_copy
    refused_and_untouched(pull(capsys, served, digest, dest, files), dest, before, "a manifest of another digest")


def test_a_bundle_file_that_differs_from_the_verified_one_is_refused(bundle_image, old_copy, capsys):
    """A consistent image (manifest, layer and digests agree) holding another model.json."""
    files, saved = bundle_image
    digest, blobs = saved[False]
    directory = tarfile.TarInfo("bundle")
    directory.type = tarfile.DIRTYPE
    forged = tar_layer([(directory, None), (tarfile.TarInfo("bundle/model.json"), b"{}")])
    forged_digest, forged_blobs = with_layer(blobs, digest, forged)
    dest, before = old_copy
    result = pull(capsys, OCIRegistry(forged_blobs), forged_digest, dest, files)
    refused_and_untouched(result, dest, before, "does not hold the verified bundle: model.json changed")


@pytest.mark.parametrize(
    "entry",
    [
        ("bundle/../escaped.txt", tarfile.REGTYPE, ""),
        ("bundle/model.onnx", tarfile.SYMTYPE, "/etc/shadow"),
        ("etc/cron.d/edgeml", tarfile.REGTYPE, ""),
    ],
    ids=["dot-dot", "symlink", "outside-bundle"],
)
def test_a_layer_entry_that_is_not_a_bundle_file_is_refused(bundle_image, old_copy, capsys, entry):
    files, saved = bundle_image
    digest, blobs = saved[False]
    name, kind, target = entry
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    layer = tar_layer([(info, b"x" if kind == tarfile.REGTYPE else None)])
    forged_digest, forged_blobs = with_layer(blobs, digest, layer)
    dest, before = old_copy
    result = pull(capsys, OCIRegistry(forged_blobs), forged_digest, dest, files)
    refused_and_untouched(result, dest, before, "which is not a bundle file or directory")
    assert not (dest.parent / "escaped.txt").exists()


def test_a_registry_without_the_image_says_which_registry_to_check(bundle_image, old_copy, capsys):
    files, saved = bundle_image
    _digest, blobs = saved[False]
    dest, before = old_copy
    refused_and_untouched(pull(capsys, OCIRegistry(blobs), DIGEST, dest, files), dest, before, "does not hold")


# --- model_stage: trust, bundle and server image in one call ---------------------------------


def stage(capsys, **args) -> dict:
    return models.run_module(model_stage.main, dict(tls_verify=False, **args), capsys)


@pytest.fixture
def trust_dir(tmp_path) -> Path:
    """A trust directory holding one key, through a symlink (as a key managed elsewhere is)."""
    keys = tmp_path / "managed-keys"
    keys.mkdir()
    (keys / "release-2026.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    trust = tmp_path / "trusted-keys"
    trust.mkdir()
    (trust / "release.pub").symlink_to(keys / "release-2026.pub")
    return trust


@pytest.fixture
def pulled_images(podman):
    """(the real podman's client, image references to remove with every name they got after the test)."""
    client, _tags = podman
    references: list[str] = []
    yield client, references
    for reference in references:
        image = registry.local_image_id(client, reference)
        if image:
            client.run("rmi", "--force", image, check=False)


def test_stage_refuses_a_host_that_trusts_no_signer_before_delivering_anything(bundle_image, tmp_path, capsys):
    files, saved = bundle_image
    digest, blobs = saved[True]
    served = OCIRegistry(blobs)
    trust = tmp_path / "trusted-keys"
    trust.mkdir()
    (trust / "README.txt").write_text("keys go here")
    (trust / "gone.pub").symlink_to(tmp_path / "no-such-key.pub")  # dangling: trusts nothing
    (trust / "old.pem").mkdir()
    dest = tmp_path / "host" / "bundles" / "digits" / "1.0.0"
    ref = f"{served.address}/edgeml-bundles/digits@{digest}"
    result = stage(capsys, trust_dir=str(trust), bundle=dict(ref=ref, dest=str(dest), files=files), image=ref)
    assert result.get("failed") and result["failed_at"] == "trust", result
    assert "trusts no bundle signer" in result["msg"] and "edgeml_trusted_keys" in result["msg"]
    assert "No bundle or image was delivered" in result["msg"]
    assert not dest.parent.exists() and served.requests == [], "something was delivered"
    assert not stage(capsys, trust_dir=str(trust), signature_policy="optional").get("failed")


def test_stage_makes_a_missing_trust_directory_and_only_predicts_it_in_check_mode(tmp_path, capsys):
    trust = tmp_path / "etc" / "trusted-keys"
    predicted = stage(capsys, trust_dir=str(trust), signature_policy="optional", _ansible_check_mode=True)
    assert predicted["changed"] is True and not trust.exists(), predicted
    made = stage(capsys, trust_dir=str(trust), signature_policy="optional")
    assert made["changed"] is True and made["trusted_signers"] == [], made
    assert oct(trust.stat().st_mode & 0o777) == "0o755"
    again = stage(capsys, trust_dir=str(trust), signature_policy="optional")
    assert again["changed"] is False, again


def test_stage_unpacks_the_bundle_and_pulls_the_server_image_by_digest_then_has_nothing_to_do(
    bundle_image, trust_dir, tmp_path, capsys, pulled_images
):
    client, references = pulled_images
    files, saved = bundle_image
    digest, blobs = saved[True]
    served = OCIRegistry(blobs)
    dest = tmp_path / "host" / "bundles" / "digits" / "1.0.0"
    # The bundle image stands in for the server image: any image pinned by digest will do.
    image = f"{served.address}/edgeml-bundles/digits@{digest}"
    references.append(image)
    assert client.run("image", "exists", image, check=False)[0] != 0
    args = dict(trust_dir=str(trust_dir), bundle=dict(ref=image, dest=str(dest), files=files), image=image)

    predicted = stage(capsys, _ansible_check_mode=True, **args)
    assert predicted["changed"] and predicted["bundle"]["changed"] and predicted["image"]["changed"], predicted
    assert not dest.parent.exists() and served.requests == [], "a check run delivered something"
    assert client.run("image", "exists", image, check=False)[0] != 0, "a check run pulled the image"

    result = stage(capsys, **args)
    assert not result.get("failed"), result
    assert result["trusted_signers"] == ["release.pub"]
    assert result["bundle"]["changed"] is True and result["image"] == {"changed": True, "ref": image}
    assert bundle_files(str(dest), {}) == files
    assert client.run("image", "exists", image, check=False)[0] == 0

    fetched = len(served.requests)
    again = stage(capsys, **args)
    assert again["changed"] is False and not again["bundle"]["changed"] and not again["image"]["changed"], again
    assert len(served.requests) == fetched, "a second run fetched something"


def test_stage_refuses_a_server_image_not_pinned_by_digest_before_anything(tmp_path, capsys):
    trust = tmp_path / "trusted-keys"
    result = stage(capsys, trust_dir=str(trust), image="registry.example:5000/edgeml-model-server:0.1.0")
    assert result.get("failed") and "is not pinned by digest" in result["msg"], result
    assert "failed_at" not in result and not trust.exists()


def test_stage_says_which_server_image_could_not_be_pulled(bundle_image, trust_dir, tmp_path, capsys):
    files, saved = bundle_image
    digest, blobs = saved[True]
    served = OCIRegistry(blobs)
    dest = tmp_path / "host" / "bundles" / "digits" / "1.0.0"
    missing = f"{served.address}/edgeml-model-server@{DIGEST}"
    bundle = dict(ref=f"{served.address}/edgeml-bundles/digits@{digest}", dest=str(dest), files=files)
    result = stage(capsys, trust_dir=str(trust_dir), bundle=bundle, image=missing)
    assert result.get("failed") and result["failed_at"] == "image", result
    assert f"The server image {missing} could not be pulled" in result["msg"]
    assert "nothing that serves was changed" in result["msg"]
    assert bundle_files(str(dest), {}) == files  # the verified bundle stays staged for the next run


def test_stage_records_where_a_refused_bundle_stopped_it(bundle_image, trust_dir, old_copy, capsys):
    files, saved = bundle_image
    _digest, blobs = saved[False]
    dest, before = old_copy
    bundle = dict(ref=f"{OCIRegistry(blobs).address}/edgeml-bundles/digits@{DIGEST}", dest=str(dest), files=files)
    result = stage(capsys, trust_dir=str(trust_dir), bundle=bundle)
    assert result["failed_at"] == "bundle"
    refused_and_untouched(result, dest, before, "does not hold")


def push(capsys, bundle: Path, registries: list[str], version: str | None = None, **extra) -> dict:
    """model_bundle_push of BUNDLE to REGISTRIES under VERSION (a new one when not given)."""
    args = dict(
        path=str(bundle),
        repository="edgeml-bundles/digits",
        version=version or f"1.0.0-unit.{uuid.uuid4().hex[:8]}",
        registries=registries,
        files=bundle_files(str(bundle), {}),
        tls_verify=False,
        **extra,
    )
    return {**models.run_module(model_bundle_push.main, args, capsys), "version": args["version"]}


@pytest.fixture
def pushed_tags(podman):
    """Tags model_bundle_push leaves in this machine's podman storage: removed after the test."""
    _client, tags = podman
    return tags


def test_push_sends_the_layer_uncompressed_to_every_registry_once_and_hosts_unpack_it(
    bundle, pushed_tags, tmp_path, capsys
):
    """Two registries, one answering uploads with relative Locations, one handing out tokens
    per scope (a pull token does not push): each gets the bundle image with its one layer a
    plain tar (no compression for the controller to do, none for a host to undo), the same
    manifest everywhere, naming the image's ID; a host pulls the verified files from either by
    digest. A second push sends nothing."""
    sites = [OCIRegistry(relative=True), OCIRegistry(token="unit-token")]
    result = push(capsys, bundle, [site.address for site in sites])
    pushed_tags.append(f"localhost/edgeml-bundles/digits:{result['version']}")
    assert not result.get("failed") and result["changed"] is True, result
    assert sorted(result["pushed"]) == sorted(site.address for site in sites)
    digests = {result["digests"][site.address] for site in sites}
    assert len(digests) == 1, result["digests"]
    (digest,) = digests
    for site in sites:
        manifest = json.loads(site.blobs[digest])
        assert manifest["config"]["digest"] == result["image_id"]
        assert [layer["mediaType"] for layer in manifest["layers"]] == [TAR_LAYER]
        assert site.tags[f"edgeml-bundles/digits:{result['version']}"] == digest
    files = bundle_files(str(bundle), {})
    dest = tmp_path / "host" / "digits" / "1.0.0"
    assert pull(capsys, sites[1], digest, dest, files)["changed"] is True
    assert bundle_files(str(dest), {}) == files
    asked = [path for path in sites[1].requests if path.startswith("/token?")]
    token_scopes = [urllib.parse.unquote(path.split("scope=", 1)[1]) for path in asked]
    assert "repository:edgeml-bundles/digits:pull,push" in token_scopes, token_scopes

    sent = [len([r for r in site.requests if r.startswith(("POST", "PUT"))]) for site in sites]
    again = push(capsys, bundle, [site.address for site in sites], version=result["version"])
    assert again["changed"] is False and again["pushed"] == [], again
    assert [len([r for r in site.requests if r.startswith(("POST", "PUT"))]) for site in sites] == sent


def test_a_registry_that_refuses_a_blob_is_named_and_holds_no_tag(bundle, pushed_tags, capsys, monkeypatch):
    """The registry checks every blob against its digest: a blob sent with other bytes is
    refused (400), the push fails naming the registry and the blob, and no tag points at an
    image whose blobs the registry lacks."""
    site = OCIRegistry()
    sent = registry.RegistryClient.upload_blob

    def corrupting(self, registry_address, repository, digest, path):
        corrupted = path.parent / "corrupted"
        corrupted.write_bytes(path.read_bytes() + b"x")
        return sent(self, registry_address, repository, digest, corrupted)

    monkeypatch.setattr(registry.RegistryClient, "upload_blob", corrupting)
    result = push(capsys, bundle, [site.address])
    pushed_tags.append(f"localhost/edgeml-bundles/digits:{result['version']}")
    assert result.get("failed"), result
    assert f"The registry {site.address} did not take the blob sha256:" in result["msg"], result["msg"]
    assert "400" in result["msg"] and "(DIGEST_INVALID)" in result["msg"] and site.tags == {}


def test_a_layout_podman_saved_with_a_compressed_layer_is_refused_with_what_to_do(bundle_image, podman, tmp_path):
    """read_layout builds the manifest for plain tar layers only: a layout whose layer is not
    its diff ID (here podman's gzip) is refused, saying how to get a plain one."""
    client, _tags = podman
    _files, saved = bundle_image
    digest, blobs = saved[True]
    image = json.loads(blobs[digest])["config"]["digest"]
    client.run("save", "--format", "oci-dir", "-o", str(tmp_path / "gzip"), image.removeprefix("sha256:"))
    with pytest.raises(EdgeMLError, match=r"or not as plain tar layers") as refused:
        registry.read_layout(str(tmp_path / "gzip"), image)
    assert f"podman rmi {image.removeprefix('sha256:')}" in refused.value.hint
    with pytest.raises(EdgeMLError, match=r"cannot read"):
        registry.read_layout(str(tmp_path / "nothing"), image)


def test_a_bundle_image_podman_pulled_before_is_pushed_as_the_same_plain_tar(bundle_image, pulled_images):
    """podman keeps the manifest an image was pulled with (naming a gzip layer) and saves the
    plain tar under it: the manifest pushed is written from the image itself, the same as for
    an image never pulled (found on the lab, where hosts were told to gunzip a plain tar)."""
    client, references = pulled_images
    _files, saved = bundle_image
    digest, blobs = saved[True]
    image = json.loads(blobs[digest])["config"]["digest"]
    target = ("edgeml-bundles/digits", "1.0.0")
    before, after = OCIRegistry(), OCIRegistry()
    registry.push_everywhere(client, registry.RegistryClient(tls_verify=False), image, [(before.address, *target)])
    source = f"{OCIRegistry(blobs).address}/edgeml-bundles/digits@{digest}"
    references.append(source)
    client.run("pull", "--quiet", "--tls-verify=false", source)
    registry.push_everywhere(client, registry.RegistryClient(tls_verify=False), image, [(after.address, *target)])
    assert after.tags == before.tags, "the pull changed the manifest pushed"
    layer = json.loads(after.blobs[after.tags[":".join(target)]])["layers"][0]
    assert layer["mediaType"] == TAR_LAYER
    with tarfile.open(fileobj=io.BytesIO(after.blobs[layer["digest"]]), mode="r|") as plain:
        assert "bundle/model.json" in [member.name.removeprefix("./") for member in plain]


def test_pushes_to_every_registry_end_before_their_failures_are_raised(bundle, podman, tmp_path):
    """Two pushes at once, both to a port nothing listens on: each runs, and the caller gets
    one error naming both."""
    client, tags = podman
    tag = f"localhost/edgeml-test-bundles/digits-{uuid.uuid4().hex[:8]}:1.0.0"
    tags.append(tag)
    image = registry.build_bundle_image(client, str(bundle), bundle_files(str(bundle), {}), tag)
    tried: list[str] = []

    class Recording(registry.RegistryClient):
        def has_blob(self, registry_address: str, repository: str, digest: str) -> bool:
            tried.append(repository)
            return super().has_blob(registry_address, repository, digest)

    targets = [("127.0.0.1:9", "edgeml-bundles/digits", "1.0.0"), ("127.0.0.1:9", "edgeml-bundles/other", "1.0.0")]
    with pytest.raises(EdgeMLError, match=r"2 of 2 pushes failed") as failed:
        registry.push_everywhere(client, Recording(tls_verify=False), image, targets)
    assert all(repository in str(failed.value) for _registry, repository, _tag in targets), failed.value
    assert sorted(tried) == ["edgeml-bundles/digits", "edgeml-bundles/other"]


def test_stage_makes_the_model_directory_roots_and_0755_whatever_the_umask(trust_dir, tmp_path, capsys):
    model_dir = tmp_path / "bundles" / "digits"
    model_dir.mkdir(parents=True, mode=0o700)
    model_dir.chmod(0o700)  # as a host with umask 077 would have made it
    args = dict(trust_dir=str(trust_dir), model_dir=str(model_dir))
    predicted = stage(capsys, _ansible_check_mode=True, **args)
    assert predicted["changed"] is True and oct(model_dir.stat().st_mode & 0o777) == "0o700", predicted
    made = stage(capsys, **args)
    assert made["changed"] is True and oct(model_dir.stat().st_mode & 0o777) == "0o755", made
    assert (model_dir.stat().st_uid, model_dir.stat().st_gid) == (0, 0)
    assert stage(capsys, **args)["changed"] is False


def test_stage_says_what_is_wrong_with_a_trust_directory_it_cannot_read(tmp_path, capsys):
    trust = tmp_path / "trusted-keys"
    trust.symlink_to(tmp_path / "gone")  # dangling: not a directory, and cannot be made one
    result = stage(capsys, trust_dir=str(trust), signature_policy="optional")
    assert result.get("failed") and result["failed_at"] == "trust", result
    assert f"Reading the trust directory {trust} failed on this host" in result["msg"]
