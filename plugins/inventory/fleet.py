# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
author: edgeml.fleet maintainers (@edgeml)
version_added: 0.1.0
short_description: A fleet of edge devices from a device list, CMDB or device manager, in rollout rings
description:
  - Reads a fleet's devices from a YAML or CSV device list, or from an HTTP endpoint with paging (a CMDB or a
    device manager), with labels per device.
  - Puts every device in a parent group (O(parent_group)), in one group per site (C(site_<site>), from the
    O(site_label) label) and in one group per rollout ring (the ring's name), and sets the variables the
    collection's playbooks read (C(edgeml_rings) on the parent group, C(edgeml_site) and C(edgeml_ring) per host).
  - Assigns rings by stable hashing (SHA-256 of the device name) and percentages, balanced within each site, so
    that every ring of every site holds the floor or the ceiling of its percentage of the site's devices.
    Devices may be pinned to a ring with a label (O(ring_label)); pinned devices keep their ring, so that new
    devices move nobody. The scheme and its measured guarantees are in docs/inventory.md.
  - The inventory file's name must end in C(.fleet.yml) or C(.fleet.yaml).
  - Labels become one dictionary host variable (O(labels_var)), usable in O(compose), O(groups) and
    O(keyed_groups).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; marks the file as its inventory source.
    required: true
    type: str
    choices: [edgeml.fleet.fleet]
  source:
    description:
      - Where the devices come from (required).
      - A YAML file holds a list of devices (or a mapping with the list under C(devices)); each device is a mapping
        with a C(name), optionally C(host) and C(port); its other keys, and the keys of an optional C(labels)
        mapping, are its labels.
      - A CSV file has a header row; the columns C(name), C(host) and C(port) are the device's, every other column
        is a label (empty cells are left out).
      - An HTTP endpoint is read page by page, as docs/inventory.md describes (C(limit) and C(offset) query
        parameters, or a C(next) link in the answer); each item is a device as in a YAML file.
    type: dict
    suboptions:
      type:
        description: The kind of source.
        type: str
        choices: [yaml, csv, http]
        required: true
      path:
        description:
          - The device list file, for O(source.type=yaml) and O(source.type=csv); relative to the inventory file.
        type: path
      url:
        description: The endpoint, for O(source.type=http).
        type: str
      page_size:
        description: Devices per page (the C(limit) query parameter).
        type: int
        default: 500
      max_pages:
        description: At most this many pages are read; a device list that goes on is an error.
        type: int
        default: 1000
      items_key:
        description: The key of a JSON object answer that holds the page's devices.
        type: str
        default: items
      headers:
        description: HTTP headers sent with every request, for example C(Authorization).
        type: dict
        default: {}
      validate_certs:
        description: Whether the endpoint's TLS certificate is verified.
        type: bool
        default: true
      timeout:
        description: Seconds each page may take.
        type: int
        default: 30
  rings:
    description:
      - The rollout rings, in rollout order. Each has a C(name) (its group), a C(percent) of every site's devices
        and optionally C(vars), set on its group (for example C(edgeml_ring_serial)).
      - Every ring but the last needs a C(percent); the last may leave it out and takes the rest. The
        percentages add up to 100.
    type: list
    elements: dict
    default:
      - {name: canary, percent: 1}
      - {name: wave1, percent: 10}
      - {name: wave2}
  site_label:
    description: The label that names a device's site; rings are balanced within each site.
    type: str
    default: site
  ring_label:
    description:
      - The label that pins a device to a ring. Pinned devices keep their ring and count toward its share;
        unpinned devices fill the rest. An empty string turns pinning off.
    type: str
    default: ring
  hash_seed:
    description: Mixed into every device's hash; change it to draw a different, equally balanced assignment.
    type: str
    default: ''
  parent_group:
    description: The group every device is in; it also holds the C(edgeml_rings) variable.
    type: str
    default: edge
  site_group_prefix:
    description: The prefix of the site groups.
    type: str
    default: site_
  labels_var:
    description: The host variable that holds a device's labels as a dictionary.
    type: str
    default: edgeml_labels
"""

EXAMPLES = r"""
# fleet.fleet.yml: devices from a CSV export, the default rings (canary 1%, wave1 10%, wave2 the rest)
plugin: edgeml.fleet.fleet
source:
  type: csv
  path: devices.csv
keyed_groups:
  - key: edgeml_labels.hardware
    prefix: hw
compose:
  ansible_user: "'edge'"

---
# cmdb.fleet.yml: devices from a device manager, read 200 at a time, cached for an hour
plugin: edgeml.fleet.fleet
source:
  type: http
  url: https://cmdb.example.com/api/v1/devices
  page_size: 200
  headers:
    Authorization: Bearer a-read-only-token
rings:
  - {name: canary, percent: 2, vars: {edgeml_ring_serial: 1}}
  - {name: early, percent: 8, vars: {edgeml_ring_serial: "25%"}}
  - {name: broad, vars: {edgeml_ring_serial: "50%", edgeml_ring_max_fail_percentage: 10}}
site_label: store
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/edgeml-fleet
cache_timeout: 3600
"""

import os

import yaml
from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._fleet_rings import (
    assign_rings,
    parse_rings,
    site_imbalance,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._fleet_source import read_source


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "edgeml.fleet.fleet"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith((".fleet.yml", ".fleet.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        self._read_config_data(path)
        try:
            rings = parse_rings(self.get_option("rings"))
            if self.get_option("parent_group") in [ring.name for ring in rings]:
                raise EdgeMLError(f"fleet: ring {self.get_option('parent_group')!r} has the name of parent_group.",
                                  hint="Rename the ring or set parent_group to another group.")
            devices = self._devices(path, cache)
            site_label, ring_label = self.get_option("site_label"), self.get_option("ring_label")
            sites = {device["name"]: device["labels"].get(site_label) for device in devices}
            assignment = assign_rings(
                ((device["name"], str(sites[device["name"]] or ""),
                  str(device["labels"][ring_label]) if ring_label and device["labels"].get(ring_label) else None)
                 for device in devices),
                rings, seed=self.get_option("hash_seed"),
            )
        except EdgeMLError as error:
            raise AnsibleParserError(f"{path}: {error}") from None
        for problem in site_imbalance({name: str(site or "") for name, site in sites.items()}, assignment, rings):
            self.display.warning(f"{path}: pinned devices unbalance a ring: {problem}")
        self._populate(devices, sites, assignment, rings)

    def _devices(self, path, cache):
        """The normalized device list, from the inventory cache when enabled and fresh."""
        use_cache = self.get_option("cache")
        key = self.get_cache_key(path)
        if use_cache and cache:
            try:
                return self._cache[key]
            except KeyError:
                pass
        devices = read_source(self.get_option("source"), os.path.dirname(path), self._load_yaml)
        if use_cache:
            self._cache[key] = devices
        return devices

    def _load_yaml(self, path):
        """A YAML device list: decrypted by the loader when vaulted, parsed by libyaml when present
        (Ansible's own YAML loader tags every value with its origin: 10x slower on 10,000 devices)."""
        try:
            text = self.loader.get_text_file_contents(path).encode()  # plain bytes for libyaml
            return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as error:
            raise EdgeMLError(f"fleet: {path} is not valid YAML: {error}") from None

    def _populate(self, devices, sites, assignment, rings):
        parent = self.inventory.add_group(self.get_option("parent_group"))
        self.inventory.set_variable(parent, "edgeml_rings", [ring.name for ring in rings])
        for ring in rings:
            self.inventory.add_group(ring.name)
            for name, value in ring.vars.items():
                self.inventory.set_variable(ring.name, name, value)
        strict, labels_var = self.get_option("strict"), self.get_option("labels_var")
        compose, groups, keyed = self.get_option("compose"), self.get_option("groups"), self.get_option("keyed_groups")
        prefix = self.get_option("site_group_prefix")
        for device in devices:
            name, site = device["name"], sites[device["name"]]
            self.inventory.add_host(name, group=parent)
            self.inventory.add_child(assignment[name], name)
            host_vars = {labels_var: device["labels"], "edgeml_ring": assignment[name]}
            if device["host"]:
                host_vars["ansible_host"] = device["host"]
            if device["port"]:
                host_vars["ansible_port"] = device["port"]
            if site not in (None, ""):
                host_vars["edgeml_site"] = site
                self.inventory.add_child(self.inventory.add_group(self._sanitize_group_name(f"{prefix}{site}")), name)
            for var, value in host_vars.items():
                self.inventory.set_variable(name, var, value)
            if compose:
                self._set_composite_vars(compose, host_vars, name, strict=strict)
            if groups:
                self._add_host_to_composed_groups(groups, host_vars, name, strict=strict)
            if keyed:
                self._add_host_to_keyed_groups(keyed, host_vars, name, strict=strict)
