"""The storage admin's part of `vsim up`: making the spec's LUNs and exports on the
array (idempotently, by name) and masking each LUN to every host of the spec."""

from __future__ import annotations

from dataclasses import replace

from vsim.iscsi import initiator_name
from vsim.spec import ClusterSpec
from vsim.storage.array import StorageArray
from vsim.storage.nfs_export import ExportOptions


def prepare_array(array: StorageArray, spec: ClusterSpec) -> ClusterSpec:
    """Makes what the spec's datastores need; returns the spec with LUN ids filled in."""
    initiators = tuple(initiator_name(h.name) for h in spec.hosts)
    datastores = []
    for datastore in spec.datastores:
        if datastore.type == "vmfs":
            lun = array.lun_named(datastore.name)
            if lun is None:
                lun = array.create_lun(datastore.size_bytes, initiators, datastore.name).id
            else:
                array.map_lun(lun, initiators)
            datastore = replace(datastore, lun=lun)
        elif datastore.name not in array.exports:
            # What ESXi needs of an NFS export: rw, sync, no_root_squash.
            array.create_export(datastore.name, ExportOptions(rw=True, sync=True))
        datastores.append(datastore)
    return replace(spec, datastores=tuple(datastores))
