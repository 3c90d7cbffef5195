# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Bundles through a registry (private): a bundle as a minimal OCI image, pushed once per
site registry by the controller and pulled by digest by each host (the way KServe's
"modelcars" ship models), then unpacked into the bundle directory the server reads.

Client: podman (build, push, create, cp, rm, rmi) through ``run_command`` on the controller,
and the registry's HTTP API (distribution spec: a manifest and its digest, a layer's blob).
Service: ``push_bundle`` on the controller, ``pull_bundle`` on a host, each idempotent and
honest in check mode.

A host fetches the bundle's one layer straight from its registry and unpacks it as it streams
in, hashing the blob and every file on the way: one read and one write of the bundle, where
``podman pull`` + ``create`` + ``cp`` wrote it three times and decompressed it in podman's
storage first (bench/delivery_bench.py). The manifest is fetched by the pinned digest and
checked against it, the blob against the manifest's digest, every file against the sha256 the
controller verified: nothing a tag says is trusted, and nothing moves into place before all
three hold.

The image is built from a fixed Containerfile (``FROM scratch``, the bundle's files under
``/bundle``) with ``--timestamp 0``: the same bundle always makes the same image, so its ID
(the digest of its config, which names the digest of the files' layer) tells whether a tag
in a registry holds this bundle or other content. Hosts never trust a tag: they pull by the
digest the controller read back from each registry, and compare every file they unpack with
the sha256 the controller verified (``model_bundle_verify``'s ``files``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import ssl
import tarfile
import tempfile
import typing as t
from urllib.parse import urlencode, urljoin, urlsplit

from ansible.module_utils.urls import open_url
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import file_differences
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import bundle_files
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule

BUNDLE_DIR_IN_IMAGE = "/bundle"
CONTAINERFILE = f"FROM scratch\nCOPY bundle/ {BUNDLE_DIR_IN_IMAGE}/\n"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = ", ".join((OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"))
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"
FILE_MODE, DIR_MODE = 0o644, 0o755
# The layer types a bundle image's layer comes in, and how tarfile streams each.
LAYER_STREAM_MODES = {
    TAR_LAYER: "r|",
    "application/vnd.oci.image.layer.v1.tar+gzip": "r|gz",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "r|gz",
}
CHUNK = 1024 * 1024
# Pushes to several registries (sites) at once, at most this many.
PUSH_WORKERS = 4
# Where podman looks for a registry's TLS files (containers-certs.d(5)), in order.
CERTS_DIRS = ("~/.config/containers/certs.d", "/etc/containers/certs.d", "/etc/docker/certs.d")
# Where podman and skopeo look for registry credentials (containers-auth.json(5)), in order.
AUTH_FILES = (
    "${REGISTRY_AUTH_FILE}",
    "${XDG_RUNTIME_DIR}/containers/auth.json",
    "/run/containers/{uid}/auth.json",
    "~/.config/containers/auth.json",
    "~/.docker/config.json",
)


# --- client ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegistryTLS:
    """A registry's TLS files as podman reads them (registry_tls): the CA certificates in its
    certs.d directory, and the first client certificate and key."""

    ca_files: tuple[str, ...] = ()
    client: tuple[str, str] | None = None

    def open_url_arguments(self, work_dir: str) -> dict[str, t.Any]:
        """ca_path, client_cert and client_key for ``open_url``. Its ca_path replaces the system's
        CAs while podman adds the directory's to them: with CA files, ca_path is one file made in
        WORK_DIR of the system's and the directory's."""
        arguments: dict[str, t.Any] = {}
        if self.client is not None:
            arguments["client_cert"], arguments["client_key"] = self.client
        if self.ca_files:
            system = ssl.get_default_verify_paths().cafile
            descriptor, arguments["ca_path"] = tempfile.mkstemp(suffix=".pem", dir=work_dir)
            with os.fdopen(descriptor, "wb") as out:
                for path in ((system,) if system and os.path.isfile(system) else ()) + self.ca_files:
                    with open(path, "rb") as source:
                        out.write(source.read().rstrip(b"\n") + b"\n")
        return arguments


class PodmanClient:
    """podman through ``run_command`` (argument lists, no shell)."""

    def __init__(self, module: t.Any) -> None:
        self.module = module

    def run(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        binary = self.module.get_bin_path("podman", required=False)
        if binary is None:
            raise EdgeMLError("podman is not installed here.", "Bundles through a registry need podman (>= 4.3).")
        try:
            # Errors come back here, not as fail_json: pushes run in threads (push_everywhere).
            rc, out, err = self.module.run_command([binary, *args], handle_exceptions=False)
        except OSError as error:
            command = " ".join(args)
            raise EdgeMLError(f"'podman {command}' could not be run: {error}", "Check podman on this host.") from None
        if check and rc != 0:
            raise EdgeMLError(
                f"'podman {' '.join(args)}' failed with exit code {rc}: {(err or out).strip()[:500]}",
                "Check that the registry is reachable from here and that podman can write its storage.",
            )
        return rc, out, err


class RegistryClient:
    """The registry's HTTP API (distribution spec): manifests and blobs, anonymous or with the
    credentials podman keeps (``podman login``), Basic or by token as the registry asks."""

    def __init__(self, tls_verify: bool, timeout: float = 30) -> None:
        self.tls_verify = tls_verify
        self.timeout = timeout
        self.authorization: dict[str, str] = {}  # registry -> Authorization header
        self._tls: dict[str, dict[str, t.Any]] = {}  # registry -> open_url's TLS arguments
        self._work: tempfile.TemporaryDirectory[str] | None = None  # CA bundles made for open_url

    def tls(self, registry: str) -> dict[str, t.Any]:
        """open_url's TLS arguments for REGISTRY (its certs.d files, as podman reads them)."""
        if not self.tls_verify:
            return {}
        if registry not in self._tls:
            if self._work is None:
                self._work = tempfile.TemporaryDirectory(prefix="edgeml-registry-tls-")
            self._tls[registry] = registry_tls(registry).open_url_arguments(self._work.name)
        return self._tls[registry]

    def get(self, registry: str, path: str, headers: dict[str, str] | None = None) -> t.Any:
        """GET https://REGISTRY/v2/PATH (http when tls_verify is false): the open response."""
        return self.request("GET", registry, path, headers)

    def request(
        self,
        method: str,
        registry: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | pathlib.Path | None = None,
    ) -> t.Any:
        """METHOD https://REGISTRY/v2/PATH, or the URL PATH when the registry answered with one
        (an upload's Location): the open response. BODY is bytes or a file sent as it is read.
        A 401 is answered once with what its challenge asks for."""
        try:
            return self.open(method, registry, path, headers, body)
        except Exception as error:  # urllib raises HTTPError, URLError, OSError, ssl errors
            if getattr(error, "code", None) != 401:
                raise
            challenge = error.headers.get("WWW-Authenticate", "") if getattr(error, "headers", None) else ""
        actions = "pull" if method in ("GET", "HEAD") else "pull,push"
        self.authorization[registry] = self.authorize(registry, challenge, path, actions)
        return self.open(method, registry, path, headers, body)

    def open(
        self,
        method: str,
        registry: str,
        path: str,
        headers: dict[str, str] | None,
        body: bytes | pathlib.Path | None = None,
    ) -> t.Any:
        sent = dict(headers or {})
        url = path if path.startswith(("http://", "https://")) else f"{self.base(registry)}/v2/{path}"
        if registry in self.authorization and urlsplit(url).netloc == registry:  # never to another host
            sent["Authorization"] = self.authorization[registry]
        data = None
        if isinstance(body, pathlib.Path):
            sent["Content-Length"] = str(body.stat().st_size)
            data = body.open("rb")
        elif body is not None:
            sent["Content-Length"] = str(len(body))
            data = body
        try:
            return open_url(
                url,
                method=method,
                data=data,
                headers=sent,
                validate_certs=self.tls_verify,
                timeout=self.timeout,
                decompress=False,
                use_netrc=False,
                **self.tls(registry),
            )
        finally:
            if isinstance(body, pathlib.Path):
                data.close()

    def base(self, registry: str) -> str:
        return f"{'https' if self.tls_verify else 'http'}://{registry}"

    def authorize(self, registry: str, challenge: str, path: str, actions: str = "pull") -> str:
        """The Authorization header the registry's 401 CHALLENGE asks for (a token for ACTIONS
        on the repository, unless the challenge names its scope)."""
        credentials = registry_credentials(registry)
        scheme, _sep, rest = challenge.partition(" ")
        if scheme.lower() == "basic" and credentials:
            return f"Basic {credentials}"
        if scheme.lower() == "bearer":
            params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            repository = path.split("/v2/", maxsplit=1)[-1]
            repository = repository.split("/manifests/", maxsplit=1)[0].split("/blobs/", maxsplit=1)[0]
            scope = params.get("scope") or f"repository:{repository}:{actions}"
            query = {"service": params.get("service", ""), "scope": scope}
            headers = {"Authorization": f"Basic {credentials}"} if credentials else {}
            # With the registry's TLS files, as podman asks its token server.
            answer = open_url(
                f"{params.get('realm', '')}?{urlencode(query)}",
                headers=headers,
                validate_certs=self.tls_verify,
                timeout=self.timeout,
                use_netrc=False,
                **self.tls(registry),
            )
            token = json.loads(answer.read())
            return f"Bearer {token.get('token') or token.get('access_token')}"
        raise EdgeMLError(
            f"The registry {registry} asks for credentials this host does not have.",
            f"Log the host in to it (podman login {registry}), or let the site's registry serve bundles anonymously.",
        )

    def manifest(self, registry: str, repository: str, reference: str) -> tuple[str, dict[str, t.Any]] | None:
        """(digest, manifest) of REFERENCE (a tag or a digest), or None when it is not there.
        A manifest asked for by digest must hash to it."""
        try:
            answer = self.get(registry, f"{repository}/manifests/{reference}", {"Accept": MANIFEST_TYPES})
            body = answer.read()
            digest = answer.headers.get("Docker-Content-Digest", "")
        except EdgeMLError:
            raise
        except Exception as error:
            if getattr(error, "code", None) == 404:
                return None
            raise EdgeMLError(
                f"The registry {registry} did not answer for {repository}:{reference}: {error}.",
                "Check model_deployment_bundle_registry_from_controller (host:port) and "
                "model_deployment_registry_tls_verify.",
            ) from None
        if reference.startswith("sha256:"):
            if "sha256:" + hashlib.sha256(body).hexdigest() != reference:
                raise EdgeMLError(
                    f"The registry {registry} answered for {repository}@{reference} with a manifest of another digest. "
                    "Nothing on this host was changed.",
                    "The registry serves corrupted or forged content: check its storage, then run the rollout again.",
                )
            digest = reference
        try:
            return digest, json.loads(body)
        except ValueError:
            raise EdgeMLError(
                f"The registry {registry} answered for {repository}:{reference} with something that is not a manifest.",
                "Check that the address is a container registry.",
            ) from None

    def blob(self, registry: str, repository: str, digest: str) -> t.Any:
        """The open response streaming the blob DIGEST (not checked here: see HashingReader)."""
        try:
            return self.get(registry, f"{repository}/blobs/{digest}")
        except EdgeMLError:
            raise
        except Exception as error:
            raise EdgeMLError(
                f"The registry {registry} did not serve the blob {digest} of {repository}: {error}.",
                "Check that the registry holds the bundle image (model_bundle_push) and is reachable from this host.",
            ) from None

    def has_blob(self, registry: str, repository: str, digest: str) -> bool:
        """Whether the registry holds the blob DIGEST in REPOSITORY."""
        try:
            self.request("HEAD", registry, f"{repository}/blobs/{digest}").read()
            return True
        except EdgeMLError:
            raise
        except Exception as error:
            if getattr(error, "code", None) == 404:
                return False
            raise self.refused(registry, f"the blob {digest} of {repository}", error) from None

    def upload_blob(self, registry: str, repository: str, digest: str, path: pathlib.Path) -> bool:
        """Upload the file PATH as the blob DIGEST of REPOSITORY (an upload started with POST,
        then the whole blob in one PUT), unless the registry holds it; whether it was sent.
        The registry checks what it receives against DIGEST."""
        if self.has_blob(registry, repository, digest):
            return False
        try:
            uploads = f"{repository}/blobs/uploads/"
            started = self.request("POST", registry, uploads, body=b"")
            location = started.headers.get("Location", "")
            if not location:
                raise EdgeMLError(
                    f"The registry {registry} started an upload to {repository} without saying where to send it.",
                    "Check that the address is a container registry (distribution spec).",
                )
            # Absolute, or relative to the request (the spec allows both).
            location = urljoin(f"{self.base(registry)}/v2/{uploads}", location)
            query = urlencode({"digest": digest})
            separator = "&" if "?" in location else "?"
            headers = {"Content-Type": "application/octet-stream"}
            self.request("PUT", registry, f"{location}{separator}{query}", headers, path).read()
        except EdgeMLError:
            raise
        except Exception as error:
            raise self.refused(registry, f"the blob {digest} of {repository}", error) from None
        return True

    def put_manifest(self, registry: str, repository: str, tag: str, body: bytes, media_type: str) -> None:
        """Tag BODY (a manifest whose blobs the registry holds) as REPOSITORY:TAG."""
        try:
            self.request("PUT", registry, f"{repository}/manifests/{tag}", {"Content-Type": media_type}, body).read()
        except EdgeMLError:
            raise
        except Exception as error:
            raise self.refused(registry, f"the manifest of {repository}:{tag}", error) from None

    @staticmethod
    def refused(registry: str, what: str, error: Exception) -> EdgeMLError:
        """The error for a request the registry refused, with the codes it gave (DIGEST_INVALID,
        MANIFEST_BLOB_UNKNOWN, DENIED...) when its answer has them."""
        codes = ""
        try:
            answer = json.loads(error.read() or b"{}") if hasattr(error, "read") else {}
            codes = ", ".join(str(entry.get("code")) for entry in answer.get("errors", []) if isinstance(entry, dict))
        except Exception:  # an answer that is not the spec's error body: the status says enough
            codes = ""
        return EdgeMLError(
            f"The registry {registry} did not take {what}: {error}{f' ({codes})' if codes else ''}.",
            "Check that the registry is reachable from here and accepts pushes, and the credentials "
            f"podman keeps for it (podman login {registry}).",
        )


def registry_certs_dir(registry: str) -> str | None:
    """The directory of REGISTRY's TLS files that podman reads (containers-certs.d(5)): the
    first of CERTS_DIRS that has one named after it, and only that one; or None."""
    for base in CERTS_DIRS:
        directory = os.path.join(os.path.expanduser(base), registry)
        if os.path.isdir(directory):
            return directory
    return None


def registry_tls(registry: str) -> RegistryTLS:
    """What podman would present to REGISTRY and trust from it, from its certs.d directory:
    every ``*.crt`` a CA certificate (beside the system's), a ``NAME.cert`` with its
    ``NAME.key`` a client certificate. A certificate without its key, or a key without its
    certificate, is an error, as it is to podman."""
    directory = registry_certs_dir(registry)
    if directory is None:
        return RegistryTLS()
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise EdgeMLError(
            f"The TLS directory of the registry {registry} ({directory}) cannot be read: {error.strerror}.",
            "Let this user read it (podman reads it too), or remove it.",
        ) from None
    for name in names:
        base, ext = os.path.splitext(name)
        partner = {".cert": base + ".key", ".key": base + ".cert"}.get(ext)
        if partner is not None and partner not in names:
            raise EdgeMLError(
                f"{os.path.join(directory, name)} has no {partner} beside it: podman refuses this directory too.",
                "Put a client certificate (NAME.cert) and its key (NAME.key) side by side; "
                "a CA certificate is named NAME.crt.",
            )
    pairs = [
        (os.path.join(directory, name), os.path.join(directory, name[: -len(".cert")] + ".key"))
        for name in names
        if name.endswith(".cert")
    ]
    return RegistryTLS(
        ca_files=tuple(os.path.join(directory, name) for name in names if name.endswith(".crt")),
        client=pairs[0] if pairs else None,
    )


def registry_credentials(registry: str) -> str | None:
    """base64(user:password) for REGISTRY from the first auth file podman would read, or None."""
    for pattern in AUTH_FILES:
        path = os.path.expanduser(os.path.expandvars(pattern.replace("{uid}", str(os.getuid()))))
        if "$" in path or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                auths = json.load(handle).get("auths", {})
        except (OSError, ValueError):
            continue
        for name, entry in auths.items():
            if name.split("://")[-1].split("/")[0] == registry and entry.get("auth"):
                return entry["auth"]
        return None  # podman reads the first file it finds only
    return None


class HashingReader:
    """A file-like view of a stream that hashes every byte read through it."""

    def __init__(self, raw: t.Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        return data

    def digest(self) -> str:
        """sha256:... of the whole stream (what is left of it is read first)."""
        while self.read(CHUNK):
            pass
        return "sha256:" + self.sha256.hexdigest()


# --- service --------------------------------------------------------------------------------


def set_modes(root: str) -> None:
    """Files 0644 and directories 0755, as the SSH delivery leaves them."""
    for directory, _dirs, names in os.walk(root):
        os.chmod(directory, DIR_MODE)
        for name in names:
            os.chmod(os.path.join(directory, name), FILE_MODE)


def build_bundle_image(podman: PodmanClient, path: str, files: dict[str, str], tag: str) -> str:
    """Build the bundle's image from a copy of PATH checked against FILES; return its ID."""
    with tempfile.TemporaryDirectory(prefix="edgeml-bundle-image-") as context:
        staged = os.path.join(context, "bundle")
        shutil.copytree(path, staged, symlinks=False)
        set_modes(staged)
        # The copy is what goes into the image: it must be what was verified.
        changed = file_differences(files, bundle_files(staged, {}))
        if changed:
            raise EdgeMLError(
                f"The bundle {path} changed after it was verified: {', '.join(changed)}.",
                "Something writes into the bundle directory during the rollout; run the rollout again.",
                changes=changed,
            )
        containerfile = os.path.join(context, "Containerfile")
        with open(containerfile, "w", encoding="utf-8") as handle:
            handle.write(CONTAINERFILE)
        # --layers=false: no look into podman's build cache, whose entry for the same bundle may be
        # another run's image that its rmi removes meanwhile ("layer not known"); the ID is the same.
        podman.run(
            "build", "--quiet", "--layers=false", "--timestamp", "0", "--format", "oci", "-t", tag,
            "-f", containerfile, context,
        )
    image = local_image_id(podman, tag)
    if image is None:
        raise EdgeMLError(f"podman built {tag} but cannot find it.", "Check podman's storage on this host.")
    return image


def local_image_id(podman: PodmanClient, reference: str) -> str | None:
    """The ID (sha256:...) of the image REFERENCE in this host's podman storage, or None."""
    rc, out, _err = podman.run("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    if rc != 0:
        return None
    image = out.strip()
    return image if image.startswith("sha256:") else f"sha256:{image}"


def push_bundle(
    podman: PodmanClient,
    registry_client: RegistryClient,
    *,
    path: str,
    repository: str,
    version: str,
    registries: t.Sequence[str],
    files: dict[str, str],
    check_mode: bool,
) -> dict[str, t.Any]:
    """Make sure every registry holds the bundle under REPOSITORY:VERSION (each pushed to at
    most once); return the digest of the manifest each one holds. A tag holding other content
    is refused, never replaced."""
    tag = f"localhost/{repository}:{version}"
    existed = podman.run("image", "exists", tag, check=False)[0] == 0
    image = build_bundle_image(podman, path, files, tag)
    try:
        # Every registry is read before any is pushed to: one holding other content stops
        # the delivery everywhere, with nothing sent anywhere.
        holding = {registry: registry_client.manifest(registry, repository, version) for registry in registries}
        for registry, found in holding.items():
            if found is not None:
                require_same_image(registry, f"{repository}:{version}", found, image)
        pushed = [registry for registry, found in holding.items() if found is None]
        if check_mode:  # the digests of the registries that hold it already; nothing pushed
            digests = {registry: found[0] for registry, found in holding.items() if found is not None}
            return {"changed": bool(pushed), "image_id": image, "digests": digests, "pushed": pushed}
        push_everywhere(podman, registry_client, image, [(registry, repository, version) for registry in pushed])
        for registry in pushed:
            found = registry_client.manifest(registry, repository, version)
            if found is None:
                raise EdgeMLError(
                    f"{registry}/{repository}:{version} is not there right after the push.",
                    "Check the registry's storage and logs.",
                )
            require_same_image(registry, f"{repository}:{version}", found, image)
            holding[registry] = found
    finally:
        if check_mode and not existed:
            podman.run("rmi", tag, check=False)
    digests = {registry: found[0] for registry, found in holding.items() if found is not None}
    return {"changed": bool(pushed), "image_id": image, "digests": digests, "pushed": pushed}


def push_everywhere(
    podman: PodmanClient, registry_client: RegistryClient, image: str, targets: list[tuple[str, str, str]]
) -> None:
    """Push the local IMAGE (its ID) to every target (REGISTRY, REPOSITORY, TAG) at once, a
    few at a time, its layer uncompressed: podman and skopeo gzip every layer they push to a
    registry, which for model weights saves about 7% of the bytes and costs seconds of CPU on
    the controller for every push and on every host for every pull (docs/bundle-format.md).
    The image is saved once as an OCI layout; every registry gets the blobs it lacks and then
    the manifest, the same bytes everywhere. Failures are raised once all pushes have ended,
    every one of them named."""
    if not targets:
        return
    with tempfile.TemporaryDirectory(prefix="edgeml-bundle-push-") as work:
        layout = os.path.join(work, "layout")
        image_id = image.removeprefix("sha256:")
        podman.run("save", "--quiet", "--format", "oci-dir", "--uncompressed", "-o", layout, image_id)
        manifest, blobs = read_layout(layout, image)

        def push(registry: str, repository: str, tag: str) -> None:
            for digest in blobs:
                registry_client.upload_blob(registry, repository, digest, layout_blob(layout, digest))
            registry_client.put_manifest(registry, repository, tag, manifest, OCI_MANIFEST)

        # Ansible's open_url installs its opener for the whole process before it opens: pushes
        # in threads could use each other's CA or client certificate. Registries with TLS files
        # of their own (certs.d) are pushed to one at a time.
        tls = {registry_tls(registry) for registry, _repository, _tag in targets}
        workers = 1 if registry_client.tls_verify and len(tls) > 1 else min(PUSH_WORKERS, len(targets))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            pushes = [pool.submit(push, *target) for target in targets]
    failures = [push.exception() for push in pushes if push.exception() is not None]
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise EdgeMLError(
            f"{len(failures)} of {len(targets)} pushes failed: " + "; ".join(str(failure) for failure in failures),
            "Check that those registries are reachable from here.",
        )


def layout_blob(layout: str, digest: str) -> pathlib.Path:
    return pathlib.Path(layout, "blobs", *digest.split(":", 1))


def read_layout(layout: str, image: str) -> tuple[bytes, list[str]]:
    """(an OCI image manifest, its blobs' digests: layers, then config) for the one image
    podman saved into the OCI layout LAYOUT, which must be IMAGE (config digest = image ID)
    with plain tar layers (``podman save --uncompressed``).

    The manifest is written here, not taken from the layout: podman saves the manifest an image
    was pulled with, which names a gzip layer even when the blob saved is the plain tar. A layer
    whose digest is its diff ID (the plain tar's, from the config) is a plain tar; the same
    image always makes the same manifest, however it came into podman's storage."""
    try:
        with open(os.path.join(layout, "index.json"), encoding="utf-8") as handle:
            entry = json.load(handle)["manifests"][0]
        saved = json.loads(layout_blob(layout, entry["digest"]).read_bytes())
        config = json.loads(layout_blob(layout, image).read_bytes())
        saved_layers = [(layer["digest"], int(layer["size"])) for layer in saved["layers"]]
        diff_ids = list(config["rootfs"]["diff_ids"])
        config_size = int(saved["config"]["size"])
        saved_image = saved["config"]["digest"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise EdgeMLError(
            f"podman saved {image} as an OCI layout this module cannot read: {error!r}.",
            "Check podman's storage and the free space of the temporary directory, then run again.",
        ) from None
    if saved_image != image or [digest for digest, _size in saved_layers] != diff_ids:
        raise EdgeMLError(
            f"podman saved {saved_image} for {image}, or not as plain tar layers.",
            f"Remove the image from this machine's podman storage (podman rmi {image.removeprefix('sha256:')}) "
            "and run again: it is rebuilt from the bundle.",
        )
    layers = [{"mediaType": TAR_LAYER, "digest": digest, "size": size} for digest, size in saved_layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": image, "size": config_size},
        "layers": layers,
    }
    body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    return body, [layer["digest"] for layer in layers] + [image]


def require_same_image(registry: str, reference: str, found: tuple[str, dict[str, t.Any]], image: str) -> None:
    """Refuse a tag that holds another image than the bundle's: a version is immutable, so
    someone pushed something else under it."""
    digest, manifest = found
    holds = (manifest.get("config") or {}).get("digest")
    if holds != image:
        raise EdgeMLError(
            f"{registry}/{reference} points at other content than the verified bundle: its image is "
            f"{holds or 'not a single image'} ({digest}), the bundle's is {image}. Nothing was sent to any host.",
            "A version is never rewritten: find out who pushed it, then delete the tag from that registry "
            "(or give the bundle a new version) and run the rollout again.",
            registry=registry,
            found=digest,
        )


def unpack_bundle_image(podman: PodmanClient, ref: str, into: str) -> None:
    """Copy the bundle out of the local image REF into INTO (the release import's check)."""
    container = podman.run("create", ref, BUNDLE_DIR_IN_IMAGE)[1].strip()
    try:
        podman.run("cp", f"{container}:{BUNDLE_DIR_IN_IMAGE}/.", into)
    finally:
        podman.run("rm", "--force", container, check=False)


def split_pinned_ref(ref: str) -> tuple[str, str, str]:
    """REGISTRY/REPOSITORY@sha256:DIGEST -> (registry, repository, digest)."""
    name, _sep, digest = ref.partition("@")
    registry, _sep, repository = name.partition("/")
    if not (re.fullmatch(r"sha256:[0-9a-f]{64}", digest) and registry and repository):
        raise EdgeMLError(
            f"ref {ref!r} is not pinned by digest (REGISTRY/REPOSITORY@sha256:DIGEST).",
            "Give the registry as the host reaches it (host:port), the repository, and the digest "
            "model_bundle_push returned for that registry: a tag can be moved to other content.",
        )
    return registry, repository, digest


def bundle_layer(manifest: dict[str, t.Any], ref: str) -> tuple[str, str]:
    """(digest, tarfile stream mode) of the bundle image's one layer."""
    layers = manifest.get("layers") or []
    if len(layers) != 1 or layers[0].get("mediaType") not in LAYER_STREAM_MODES:
        kinds = ", ".join(str(layer.get("mediaType")) for layer in layers) or "no layer"
        raise EdgeMLError(
            f"{ref} is not a bundle image: a bundle image has one tar or tar+gzip layer, this one has {kinds}. "
            "Nothing on this host was changed.",
            "Push bundles with model_bundle_push (deploy_model.yml does), which builds that image.",
        )
    return layers[0]["digest"], LAYER_STREAM_MODES[layers[0]["mediaType"]]


def stream_bundle_layer(reader: HashingReader, mode: str, into: str) -> dict[str, str]:
    """Unpack the bundle's files (under bundle/ in the layer) into INTO as the layer streams in;
    return every file's sha256. Anything but directories and regular files under bundle/ (a
    link, a device, a path leaving the bundle, a file twice) is refused."""
    prefix = BUNDLE_DIR_IN_IMAGE.strip("/") + "/"
    found: dict[str, str] = {}
    with tarfile.open(fileobj=reader, mode=mode) as layer:
        for member in layer:
            name = member.name[2:] if member.name.startswith("./") else member.name
            name = name.rstrip("/")
            if name in ("", ".", prefix.rstrip("/")) and member.isdir():
                continue
            relative = name[len(prefix):] if name.startswith(prefix) else ""
            parts = relative.split("/")
            leaves = not relative or any(part in ("", ".", "..") for part in parts)
            if leaves or not (member.isdir() or member.isfile()):
                raise EdgeMLError(
                    f"The bundle image holds {member.name!r}, which is not a bundle file or directory. "
                    "Nothing on this host was changed.",
                    "Push bundles with model_bundle_push (deploy_model.yml does), and check who else pushes to "
                    "that repository.",
                )
            target = os.path.join(into, *parts)
            if member.isdir():
                os.makedirs(target, mode=DIR_MODE, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), mode=DIR_MODE, exist_ok=True)
            digest = hashlib.sha256()
            source = layer.extractfile(member)
            with open(target, "xb") as handle:  # x: the same file twice is refused
                chunk = source.read(CHUNK)
                while chunk:
                    digest.update(chunk)
                    handle.write(chunk)
                    chunk = source.read(CHUNK)
            found[relative] = digest.hexdigest()
    return dict(sorted(found.items()))


def pull_bundle(
    registry_client: RegistryClient, *, ref: str, dest: str, files: dict[str, str], check_mode: bool
) -> dict[str, t.Any]:
    """Make DEST hold exactly FILES (path -> sha256), unpacked from the bundle image REF
    (pinned by digest) as its layer streams in from the registry; nothing is fetched when DEST
    already holds them."""
    registry, repository, digest = split_pinned_ref(ref)
    held = bundle_files(dest, {}) if os.path.isdir(dest) else {}
    if held == files:
        return {"changed": False, "ref": ref, "dest": dest}
    if check_mode:
        return {"changed": True, "ref": ref, "dest": dest, "changes": file_differences(files, held)}
    found = registry_client.manifest(registry, repository, digest)
    if found is None:
        raise EdgeMLError(
            f"The registry {registry} does not hold {repository}@{digest}. Nothing on this host was changed.",
            "The bundle was pushed to another registry than this host pulls from: check edgeml_bundle_registry "
            "and edgeml_bundle_registry_from_controller for this host's site.",
        )
    layer_digest, mode = bundle_layer(found[1], ref)
    parent = os.path.dirname(dest.rstrip("/"))
    os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
    unpacked = tempfile.mkdtemp(prefix=".pull-", dir=parent)
    try:
        reader = HashingReader(registry_client.blob(registry, repository, layer_digest))
        try:
            unpacked_files = stream_bundle_layer(reader, mode, unpacked)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise EdgeMLError(
                f"The bundle layer {layer_digest} from {registry} could not be unpacked: {error}. "
                "Nothing on this host was changed.",
                "Check the registry's storage and the host's free space, then run the rollout again.",
            ) from None
        streamed = reader.digest()
        if streamed != layer_digest:
            raise EdgeMLError(
                f"The registry {registry} served other content for the layer {layer_digest} of {ref}: it hashes to "
                f"{streamed}. Nothing on this host was changed.",
                "The registry serves corrupted or forged content: check its storage, then run the rollout again.",
            )
        changed = file_differences(files, unpacked_files)
        if changed:
            raise EdgeMLError(
                f"The bundle image {ref} does not hold the verified bundle: {', '.join(changed)}. "
                "Nothing on this host was changed.",
                "The registry served other content under this digest, or the bundle changed on the controller "
                "after it was verified: run the rollout again, and check the registry if it happens again.",
                changes=changed,
            )
        set_modes(unpacked)
        if os.path.isdir(dest):
            # Only a copy that is not the verified bundle gets here: set it aside, then replace it.
            aside = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
            os.rename(dest, os.path.join(aside, "bundle"))
            os.rename(unpacked, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(unpacked, dest)
    finally:
        if os.path.isdir(unpacked):
            shutil.rmtree(unpacked, ignore_errors=True)
    return {"changed": True, "ref": ref, "dest": dest, "changes": file_differences(files, held)}


# --- runners --------------------------------------------------------------------------------


def run_model_bundle_push(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    if not params["registries"]:
        raise EdgeMLError("No registry to push the bundle to (registries is empty).", "List at least one host:port.")
    return push_bundle(
        PodmanClient(wrapper.module),
        RegistryClient(params["tls_verify"]),
        path=params["path"],
        repository=params["repository"],
        version=params["version"],
        registries=params["registries"],
        files=params["files"],
        check_mode=wrapper.check_mode,
    )


def run_model_bundle_pull(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    split_pinned_ref(params["ref"])  # a ref not pinned by digest is refused before anything else
    if not params["files"]:
        raise EdgeMLError(
            "files is empty: nothing to check the unpacked bundle against.",
            "Pass model_bundle_verify's files.",
        )
    return pull_bundle(
        RegistryClient(params["tls_verify"]),
        ref=params["ref"],
        dest=params["dest"],
        files=params["files"],
        check_mode=wrapper.check_mode,
    )
