# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Device lists for the fleet inventory plugin: a YAML or CSV file, or a paged HTTP endpoint.

Private to the collection. Stdlib and ansible.module_utils only (the plugin hands in
its YAML loader). Every reader returns the same normalized devices:
``{"name": str, "host": str | None, "port": int | None, "labels": {str: value}}``.
The HTTP paging contract is in docs/inventory.md.
"""

from __future__ import annotations

import csv
import json
import os
import typing as t
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from ansible.module_utils.urls import open_url
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

SOURCE_TYPES = ("yaml", "csv", "http")
SOURCE_KEYS = ("type", "path", "url", "page_size", "max_pages", "items_key", "headers", "validate_certs", "timeout")
_RESERVED = ("name", "host", "port")


def _device(raw: t.Any, where: str) -> dict:
    """One normalized device from a mapping: name, host, port; the rest are labels."""
    if not isinstance(raw, dict):
        raise EdgeMLError(f"fleet: {where} is not a mapping: {raw!r}.",
                          hint="Each device is a mapping with at least a name, e.g. {name: cam-ber-01, site: berlin}.")
    name = raw.get("name")
    if name is None or str(name).strip() == "":
        raise EdgeMLError(f"fleet: {where} has no name.", hint="Give every device a name (its inventory hostname).")
    port = raw.get("port")
    if port in ("", None):
        port = None
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise EdgeMLError(f"fleet: {where} ({name}) has port {port!r}, not a number.",
                              hint="Give the SSH port as a number, or leave it out.") from None
    labels = {}
    nested = raw.get("labels")
    if nested is not None and not isinstance(nested, dict):
        raise EdgeMLError(f"fleet: {where} ({name}) has labels that are not a mapping.",
                          hint="Write labels as a mapping, e.g. labels: {site: berlin, hw: jetson}.")
    for key, value in raw.items():
        if key not in (*_RESERVED, "labels") and value not in ("", None):
            labels[str(key)] = value
    labels.update({str(key): value for key, value in (nested or {}).items()})
    host = raw.get("host")
    return {"name": str(name).strip(), "host": str(host) if host not in ("", None) else None,
            "port": port, "labels": labels}


def normalize(raw_devices: t.Any, origin: str) -> list[dict]:
    """Normalized devices from a list of mappings; duplicate names are an error."""
    if not isinstance(raw_devices, list):
        raise EdgeMLError(f"fleet: {origin} does not hold a list of devices.",
                          hint="A YAML source is a list of devices, or a mapping with the list under 'devices'.")
    devices = [_device(raw, f"device {index + 1} of {origin}") for index, raw in enumerate(raw_devices)]
    seen: dict[str, int] = {}
    for index, device in enumerate(devices):
        if device["name"] in seen:
            raise EdgeMLError(
                f"fleet: device name {device['name']!r} appears twice in {origin} "
                f"(devices {seen[device['name']] + 1} and {index + 1}).",
                hint="Device names are inventory hostnames and must be unique; remove or rename one.")
        seen[device["name"]] = index
    return devices


def read_yaml(path: str, load: t.Callable[[str], t.Any]) -> list[dict]:
    """A YAML list of devices (or a mapping with it under ``devices``), parsed by `load`."""
    data = load(path)
    if isinstance(data, dict) and "devices" in data:
        data = data["devices"]
    return normalize(data, path)


def read_csv(path: str) -> list[dict]:
    """A CSV file with a header row: name, host, port; every other column is a label."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "name" not in [field.strip() for field in reader.fieldnames]:
                raise EdgeMLError(f"fleet: {path} has no 'name' column in its header row.",
                                  hint="The first row names the columns: name,host,port,site,...")
            rows = [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in reader]
    except OSError as error:
        raise EdgeMLError(f"fleet: cannot read {path}: {error.strerror}.",
                          hint="Check source.path (relative paths are relative to the inventory file).") from None
    return normalize(rows, path)


def _page_url(url: str, limit: int, offset: int) -> str:
    """`url` with limit and offset set in its query (other parameters kept)."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)
             if key not in ("limit", "offset")]
    query += [("limit", str(limit)), ("offset", str(offset))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def read_http(
    url: str,
    *,
    page_size: int = 500,
    headers: dict | None = None,
    validate_certs: bool = True,
    timeout: float = 30,
    max_pages: int = 1000,
    items_key: str = "items",
    opener: t.Callable[..., t.Any] = open_url,
) -> list[dict]:
    """Every device from a paged endpoint (docs/inventory.md, "HTTP paging contract").

    The first request is ``url?limit=page_size&offset=0``. A JSON object's ``next`` link
    (absolute or relative), when present and not null, is the next page; without one the
    next offset is requested until a page comes back shorter than ``page_size``. A bare
    JSON list is a page too. At most `max_pages` pages are read.
    """
    if page_size < 1 or max_pages < 1:
        raise EdgeMLError("fleet: source.page_size and source.max_pages must be at least 1.")
    devices: list[t.Any] = []
    request = _page_url(url, page_size, 0)
    for page in range(1, max_pages + 1):
        failed = f"fleet: page {page} of the device list (GET {request}) failed"
        try:
            response = opener(request, method="GET", headers=headers or {}, validate_certs=validate_certs,
                              timeout=timeout, http_agent="edgeml.fleet inventory")
            body = json.loads(response.read())
        except HTTPError as error:
            raise EdgeMLError(f"{failed}: HTTP {error.code} {error.reason}.",
                              hint="Check source.url and source.headers (authentication).") from None
        except URLError as error:
            raise EdgeMLError(f"{failed}: {error.reason}.",
                              hint="Check that the endpoint is reachable from the control node.") from None
        except (OSError, ValueError) as error:
            raise EdgeMLError(f"{failed}: {error}.",
                              hint="The endpoint must answer with JSON (docs/inventory.md).") from None
        if isinstance(body, list):
            items, link, has_link = body, None, False
        elif isinstance(body, dict) and isinstance(body.get(items_key), list):
            items, link, has_link = body[items_key], body.get("next"), "next" in body
        else:
            raise EdgeMLError(f"{failed}: the answer is neither a JSON list nor an object with a list "
                              f"under {items_key!r}.",
                              hint="Set source.items_key to the key that holds the devices.")
        devices.extend(items)
        if has_link:
            if not link:
                return normalize(devices, url)
            request = urljoin(request, str(link))
        elif len(items) < page_size:
            return normalize(devices, url)
        else:
            request = _page_url(url, page_size, len(devices))
    raise EdgeMLError(f"fleet: {url} still had more devices after {max_pages} pages of {page_size}.",
                      hint="Raise source.max_pages or source.page_size, or check that the endpoint's "
                           "paging ends (a short last page, or no 'next' link).")


def read_source(source: t.Any, base_dir: str, load_yaml: t.Callable[[str], t.Any]) -> list[dict]:
    """Normalized devices from the plugin's ``source`` option."""
    if not isinstance(source, dict) or not source:
        raise EdgeMLError("fleet: the inventory file has no source.",
                          hint="Add one, e.g. source: {type: csv, path: devices.csv} (types: yaml, csv, http).")
    kind = source.get("type")
    if kind not in SOURCE_TYPES:
        raise EdgeMLError(f"fleet: source.type is {kind!r}, not one of {', '.join(SOURCE_TYPES)}.",
                          hint="Use yaml or csv with source.path, or http with source.url.")
    unknown = sorted(set(source) - set(SOURCE_KEYS))
    if unknown:
        raise EdgeMLError(f"fleet: source has unknown keys {unknown}.",
                          hint=f"A source takes {', '.join(SOURCE_KEYS)}.")
    if kind == "http":
        if not source.get("url"):
            raise EdgeMLError("fleet: source.type is http but source.url is not set.",
                              hint="Set source.url to the device list endpoint, e.g. https://cmdb.example/api/devices.")
        return read_http(
            str(source["url"]), page_size=int(source.get("page_size") or 500), headers=source.get("headers") or {},
            validate_certs=bool(source.get("validate_certs", True)), timeout=float(source.get("timeout") or 30),
            max_pages=int(source.get("max_pages") or 1000), items_key=str(source.get("items_key") or "items"),
        )
    if not source.get("path"):
        raise EdgeMLError(f"fleet: source.type is {kind} but source.path is not set.",
                          hint=f"Set source.path to the {kind.upper()} device list (relative to the inventory file).")
    path = os.path.join(base_dir, str(source["path"]))
    if not os.path.isfile(path):
        raise EdgeMLError(f"fleet: the device list {path} does not exist.",
                          hint="Check source.path (relative paths are relative to the inventory file).")
    return read_yaml(path, load_yaml) if kind == "yaml" else read_csv(path)
