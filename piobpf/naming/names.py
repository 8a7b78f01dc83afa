"""Names for the keys of a run: each port's device (and where that name came
from), and with --by vm|vcpu the VM and vCPU. The one place that decides
which sources of names a run uses."""

from dataclasses import dataclass

from ..core.errors import CliError, warn
from . import ioports, vms
from .devices import CONFIG_WRITES, DeviceNames, HOST_IOPORTS, IOPORTS_FILE, VmmMaps

DEVICE_MAPS = ("auto", "host")


def load_ioports(path):
    """The fallback table; the host's own unreadable is a warning, a given file an error."""
    try:
        table = ioports.load(path)
    except ValueError as e:
        raise CliError(f"{path}: {e}")
    except OSError as e:
        if path != ioports.PROC_IOPORTS:
            raise CliError(f"cannot read {path}: {e.strerror}")
        warn(f"cannot read {path} ({e.strerror}): DEVICE left empty")
        return ioports.IoPorts([])
    if table.all_zero:
        warn(f"{path} shows every range as 0000-0000 (reading the real ranges needs root):"
             " DEVICE left empty")
    elif table.malformed:
        warn(f"{path}: skipped {table.malformed} line(s) that are not 'start-end : name'")
    return table


class Names:
    """device(key) -> (name, source) and labels(key) -> row fields of a key."""

    def __init__(self, devices, by="port", labeler=None, maps=None):
        self.devices, self.by, self.labeler, self.maps = devices, by, labeler, maps

    @property
    def ticks(self):
        """Whether names need a look every second while tracing (new VMMs'
        maps; the kernel says itself when a VM comes: `arrived`)."""
        return bool(self.maps)

    @property
    def watch(self):
        """What a look each second must read: "all" of the map (keys per VM
        say which VM wrote PCI configuration data; MMIO keys which addresses
        the maps do not know), else only the keys that may move a BAR, else
        nothing."""
        if self.maps:
            return "all" if self.labeler or self.maps.memory else CONFIG_WRITES
        return ()

    def tick(self):
        """The look of each second; returns the VMMs (Procs) gone since."""
        return self.maps.scan() if self.maps else []

    def report(self):
        """Say now what the maps' readers found since the last look."""
        if self.maps:
            self.maps.report()

    def arrived(self, procs):
        """VMs new to the kernel map: named now, while they run."""
        for p in procs:
            if self.labeler:
                self.labeler.vm(p)
            if self.maps:
                self.maps.see(p)

    def forget(self, procs):
        """Exited VMs whose counts are no longer shown: their names and maps go."""
        if self.labeler:
            self.labeler.forget(procs)
        if self.maps:
            self.maps.forget(procs)

    def learn(self, snapshot):
        """Name what is new in `snapshot` while it still runs."""
        if self.labeler:
            self.labeler.learn(snapshot)
        if self.maps:
            for key in snapshot.counts:
                if key.vm is not None:
                    self.maps.see(key.vm)
            self.maps.refresh(snapshot)

    def device(self, key):
        return self.devices(key.port, key.vm)

    def labels(self, key):
        return self.labeler(key) if self.labeler else {}


@dataclass(frozen=True)
class NamingConfig:
    """Where names come from: with device_map "auto" each VM's own map
    (of `pids` only, when given), else only the ioports table `ioports`."""
    by: str = "port"
    device_map: str = "auto"
    ioports: str = ioports.PROC_IOPORTS
    pids: tuple = ()
    mmio: bool = False      # name guest-physical addresses from VMs' memory maps too


def from_config(config, comms=None, known=None, cmdlines=None):
    """The Names of a run: `--device-map auto` reads VMs' maps while tracing
    (`comms` given); --ioports FILE, else /proc/ioports, names the rest.
    `known`: VM names looked up already ({Proc: name}); `cmdlines`: what the
    kernel saw of new VMs (vms.Labeler)."""
    source = HOST_IOPORTS if config.ioports == ioports.PROC_IOPORTS else IOPORTS_FILE
    table = load_ioports(config.ioports)
    tracing = comms is not None
    maps = VmmMaps(config.pids or None, memory=config.mmio) \
        if tracing and config.device_map == "auto" else None
    labeler = vms.labeler(config.by, comms, known, cmdlines) if tracing else None
    return Names(DeviceNames(table, source, maps), config.by, labeler, maps)
