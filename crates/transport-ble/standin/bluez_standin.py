#!/usr/bin/python3
"""A stand-in BlueZ for tests on machines without a Bluetooth controller.

Starts a private dbus-daemon, owns `org.bluez` on it and implements the part of the
BlueZ D-Bus API that bluer and ecomesh's BlueZ backend use, over two or three
stand-in adapters that "hear" each other according to a range matrix:

- ObjectManager at `/` (GetManagedObjects, InterfacesAdded / InterfacesRemoved);
- `org.bluez.Adapter1` (Powered, Address, SetDiscoveryFilter, StartDiscovery,
  StopDiscovery, RemoveDevice), `GattManager1.RegisterApplication` (reads the app's
  objects with its ObjectManager), `LEAdvertisingManager1.RegisterAdvertisement`
  (reads the advertisement's properties);
- `org.bluez.Device1` objects for the adapters in range that advertise, refreshed
  every advertising interval (RSSI, UUIDs, ManufacturerData) while discovering;
  `Connect` / `Disconnect`, `Connected`, `ServicesResolved`;
- on connection, remote `GattService1` / `GattCharacteristic1` objects on both sides
  mirroring the other adapter's registered application (GATT runs both ways over one
  LE link, as on a real controller); `WriteValue` on a remote characteristic calls
  `WriteValue` on the other application's characteristic with the options BlueZ
  passes (`device`, `mtu`, `type`, `link`, `offset`), in order; `StartNotify` /
  `StopNotify`, and a `PropertiesChanged` of `Value` on a local characteristic is
  sent to every connected device that subscribed (as BlueZ does: to all of them).

Usage: bluez_standin.py --adapters 3 [--out-of-range 0-2] [--mtu 247]
Prints `DBUS_SYSTEM_BUS_ADDRESS=<address>` on stdout once `org.bluez` is owned,
then runs until stdin closes (the test that started it ended) or SIGTERM.
Needs Debian's dbus-daemon, python3-dbus and python3-gi.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

BLUEZ = "org.bluez"
OM = "org.freedesktop.DBus.ObjectManager"
PROPS = "org.freedesktop.DBus.Properties"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
GATT_MANAGER = "org.bluez.GattManager1"
ADV_MANAGER = "org.bluez.LEAdvertisingManager1"
GATT_SERVICE = "org.bluez.GattService1"
GATT_CHAR = "org.bluez.GattCharacteristic1"
ADV = "org.bluez.LEAdvertisement1"
MAX_VALUE = 512  # ATT attribute value limit

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class Err(dbus.DBusException):
    def __init__(self, name, text):
        super().__init__(text)
        self._dbus_error_name = "org.bluez.Error." + name


def ay(data):
    return dbus.Array(bytes(data), signature="y")


class Obj(dbus.service.Object):
    """An exported object with properties per interface, listed by the ObjectManager."""

    def __init__(self, world, path, props):
        self.world = world
        self.path = path
        self.props = props  # interface -> {name: dbus value}
        super().__init__(world.bus, path)
        world.objects[path] = self
        world.interfaces_added(path, props)

    def remove(self):
        self.world.objects.pop(self.path, None)
        self.world.interfaces_removed(self.path, list(self.props))
        self.remove_from_connection()

    def update(self, iface, changed):
        self.props[iface].update(changed)
        self.PropertiesChanged(iface, dbus.Dictionary(changed, signature="sv"), dbus.Array([], signature="s"))

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        try:
            return self.props[iface][name]
        except KeyError:
            raise Err("InvalidArguments", "no such property")

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        return dbus.Dictionary(self.props.get(iface, {}), signature="sv")

    @dbus.service.method(PROPS, in_signature="ssv")
    def Set(self, iface, name, value):
        if iface == ADAPTER and name == "Powered":
            self.update(ADAPTER, {"Powered": dbus.Boolean(bool(value))})
            return
        if iface == DEVICE and name == "Trusted":
            self.update(DEVICE, {"Trusted": dbus.Boolean(bool(value))})
            return
        raise Err("NotSupported", "read-only property")

    @dbus.service.signal(PROPS, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass


class Root(dbus.service.Object):
    def __init__(self, world):
        self.world = world
        super().__init__(world.bus, "/")

    @dbus.service.method(OM, out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        out = {}
        for path, obj in self.world.objects.items():
            out[dbus.ObjectPath(path)] = {i: dbus.Dictionary(p, signature="sv") for i, p in obj.props.items()}
        return dbus.Dictionary(out, signature="oa{sa{sv}}")

    @dbus.service.signal(OM, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, interfaces):
        pass

    @dbus.service.signal(OM, signature="oas")
    def InterfacesRemoved(self, path, interfaces):
        pass


class Adapter(Obj):
    def __init__(self, world, index):
        self.index = index
        self.name = "hci%d" % index
        self.address = "02:00:00:00:00:%02X" % (index + 1)
        self.discovering = False
        self.filter_uuids = []
        self.app = None  # (owner, {uuid: (char path, flags)}, service uuid)
        self.adv = None  # (owner, path, uuids, manufacturer data)
        self.devices = {}  # peer adapter index -> Device
        super().__init__(world, "/org/bluez/" + self.name, {
            ADAPTER: {
                "Address": dbus.String(self.address),
                "AddressType": dbus.String("public"),
                "Name": dbus.String("standin-" + self.name),
                "Alias": dbus.String("standin-" + self.name),
                "Class": dbus.UInt32(0),
                "Powered": dbus.Boolean(False),
                "Discoverable": dbus.Boolean(False),
                "Pairable": dbus.Boolean(False),
                "Discovering": dbus.Boolean(False),
                "UUIDs": dbus.Array([], signature="s"),
            },
            GATT_MANAGER: {},
            ADV_MANAGER: {
                "ActiveInstances": dbus.Byte(0),
                "SupportedInstances": dbus.Byte(4),
                "SupportedIncludes": dbus.Array([], signature="s"),
            },
        })

    def powered(self):
        return bool(self.props[ADAPTER]["Powered"])

    @dbus.service.method(ADAPTER, in_signature="a{sv}")
    def SetDiscoveryFilter(self, flt):
        self.filter_uuids = [str(u).lower() for u in flt.get("UUIDs", [])]

    @dbus.service.method(ADAPTER)
    def StartDiscovery(self):
        if not self.powered():
            raise Err("NotReady", "Resource Not Ready")
        self.discovering = True
        self.update(ADAPTER, {"Discovering": dbus.Boolean(True)})

    @dbus.service.method(ADAPTER)
    def StopDiscovery(self):
        self.discovering = False
        self.update(ADAPTER, {"Discovering": dbus.Boolean(False)})

    @dbus.service.method(ADAPTER, in_signature="o")
    def RemoveDevice(self, path):
        for idx, dev in list(self.devices.items()):
            if dev.path == path:
                self.world.disconnect(self.index, idx)
                dev.remove()
                del self.devices[idx]
                return
        raise Err("DoesNotExist", "Does Not Exist")

    @dbus.service.method(GATT_MANAGER, in_signature="oa{sv}", sender_keyword="sender",
                         async_callbacks=("ok", "err"))
    def RegisterApplication(self, path, options, sender=None, ok=None, err=None):
        def got(objects):
            chars = {}
            service = None
            for p, ifaces in objects.items():
                if GATT_SERVICE in ifaces and service is None:
                    service = str(ifaces[GATT_SERVICE]["UUID"]).lower()
                if GATT_CHAR in ifaces:
                    uuid = str(ifaces[GATT_CHAR]["UUID"]).lower()
                    flags = [str(f) for f in ifaces[GATT_CHAR].get("Flags", [])]
                    chars[uuid] = (str(p), flags)
            self.app = (sender, chars, service)
            ok()

        proxy = self.world.bus.get_object(sender, path, introspect=False)
        proxy.GetManagedObjects(dbus_interface=OM, reply_handler=got,
                                error_handler=lambda e: err(Err("InvalidArguments", str(e))))

    @dbus.service.method("org.ecomesh.Standin1", out_signature="sa{ss}")
    def App(self):
        """Tests only (not BlueZ): the registered application's bus name and its
        characteristics (uuid -> object path), for hostile.py to write to directly."""
        if not self.app:
            raise Err("DoesNotExist", "no application")
        return (self.app[0], {u: p for u, (p, _) in self.app[1].items()})

    @dbus.service.method(GATT_MANAGER, in_signature="o", sender_keyword="sender")
    def UnregisterApplication(self, path, sender=None):
        self.app = None

    @dbus.service.method(ADV_MANAGER, in_signature="oa{sv}", sender_keyword="sender",
                         async_callbacks=("ok", "err"))
    def RegisterAdvertisement(self, path, options, sender=None, ok=None, err=None):
        def got(props):
            uuids = [str(u).lower() for u in props.get("ServiceUUIDs", [])]
            mdata = {int(k): bytes(bytearray(v)) for k, v in props.get("ManufacturerData", {}).items()}
            if sum(len(v) + 4 for v in mdata.values()) + 18 * len(uuids) + 3 > 31:
                err(Err("InvalidLength", "Advertising data too long"))
                return
            self.adv = (sender, str(path), uuids, mdata)
            ok()

        proxy = self.world.bus.get_object(sender, path, introspect=False)
        proxy.GetAll(ADV, dbus_interface=PROPS, reply_handler=got,
                     error_handler=lambda e: err(Err("InvalidArguments", str(e))))

    @dbus.service.method(ADV_MANAGER, in_signature="o")
    def UnregisterAdvertisement(self, path):
        if self.adv and self.adv[1] == str(path):
            self.adv = None


class Device(Obj):
    """Adapter `local`'s view of adapter `peer`."""

    def __init__(self, world, local, peer):
        self.local = local
        self.peer = peer
        self.gatt = []  # remote GATT objects while connected
        self.subscribed = set()  # characteristic uuids with StartNotify
        la, pa = world.adapters[local], world.adapters[peer]
        super().__init__(world, la.path + "/dev_" + pa.address.replace(":", "_"), {
            DEVICE: {
                "Address": dbus.String(pa.address),
                "AddressType": dbus.String("public"),
                "Alias": dbus.String(pa.address.replace(":", "-")),
                "Adapter": dbus.ObjectPath(la.path),
                "Paired": dbus.Boolean(False),
                "Bonded": dbus.Boolean(False),
                "Trusted": dbus.Boolean(False),
                "Blocked": dbus.Boolean(False),
                "LegacyPairing": dbus.Boolean(False),
                "Connected": dbus.Boolean(False),
                "ServicesResolved": dbus.Boolean(False),
                "UUIDs": dbus.Array([], signature="s"),
            }
        })

    @dbus.service.method(DEVICE, async_callbacks=("ok", "err"))
    def Connect(self, ok=None, err=None):
        reason = self.world.connect(self.local, self.peer)
        if reason:
            err(Err("Failed", reason))
        else:
            ok()

    @dbus.service.method(DEVICE)
    def Disconnect(self):
        self.world.disconnect(self.local, self.peer)


class Service(Obj):
    pass


class Char(Obj):
    """A remote characteristic: `dev` (local's view of peer) mirrors peer's app char."""

    def __init__(self, world, path, props, dev, uuid):
        self.dev = dev
        self.uuid = uuid
        super().__init__(world, path, props)

    @dbus.service.method(GATT_CHAR, in_signature="aya{sv}", async_callbacks=("ok", "err"))
    def WriteValue(self, value, options, ok=None, err=None):
        w = self.world
        local, peer = self.dev.local, self.dev.peer
        if not w.connected(local, peer):
            err(Err("NotConnected", "Not Connected"))
            return
        if len(value) > MAX_VALUE:
            err(Err("InvalidValueLength", "Invalid Length"))
            return
        app = w.adapters[peer].app
        if not app or self.uuid not in app[1]:
            err(Err("Failed", "Operation failed"))
            return
        owner, (path, _) = app[0], app[1][self.uuid]
        kind = str(options.get("type", "request"))
        # The peer's application sees the write as coming from its Device1 of us.
        opts = dbus.Dictionary({
            "device": dbus.ObjectPath(w.adapters[peer].devices[local].path),
            "mtu": dbus.UInt16(w.mtu),
            "link": dbus.String("LE"),
            "type": dbus.String(kind),
            "offset": dbus.UInt16(0),
        }, signature="sv")
        proxy = w.bus.get_object(owner, path, introspect=False)
        if kind == "command":
            # Write without response: queued in order, no answer awaited.
            proxy.WriteValue(ay(value), opts, dbus_interface=GATT_CHAR,
                             reply_handler=lambda: None, error_handler=lambda e: None)
            ok()
        else:
            proxy.WriteValue(ay(value), opts, dbus_interface=GATT_CHAR,
                             reply_handler=ok, error_handler=lambda e: err(Err("Failed", str(e))))

    @dbus.service.method(GATT_CHAR)
    def StartNotify(self):
        self.dev.subscribed.add(self.uuid)
        self.update(GATT_CHAR, {"Notifying": dbus.Boolean(True)})

    @dbus.service.method(GATT_CHAR)
    def StopNotify(self):
        self.dev.subscribed.discard(self.uuid)
        self.update(GATT_CHAR, {"Notifying": dbus.Boolean(False)})


class World:
    def __init__(self, bus, n, out_of_range, mtu, interval_ms):
        self.bus = bus
        self.objects = {}
        self.mtu = mtu
        self.links = set()  # frozenset({a, b}) connected pairs
        self.out = set(frozenset(p) for p in out_of_range)
        self.tick = 0
        self.root = Root(self)
        self.adapters = [Adapter(self, i) for i in range(n)]
        GLib.timeout_add(interval_ms, self.advertise)
        bus.add_signal_receiver(self.app_value_changed, signal_name="PropertiesChanged",
                                dbus_interface=PROPS, path_keyword="path", sender_keyword="sender")

    def interfaces_added(self, path, props):
        if hasattr(self, "root"):
            self.root.InterfacesAdded(dbus.ObjectPath(path), {
                i: dbus.Dictionary(p, signature="sv") for i, p in props.items()})

    def interfaces_removed(self, path, ifaces):
        self.root.InterfacesRemoved(dbus.ObjectPath(path), dbus.Array(ifaces, signature="s"))

    def in_range(self, a, b):
        return a != b and frozenset((a, b)) not in self.out

    def connected(self, a, b):
        return frozenset((a, b)) in self.links

    def rssi(self, a, b):
        # A fixed level per pair with a little movement, so each advertisement is a change.
        return -50 - 5 * abs(a - b) - (self.tick % 3)

    def device(self, local, peer):
        la = self.adapters[local]
        if peer not in la.devices:
            la.devices[peer] = Device(self, local, peer)
        return la.devices[peer]

    def advertise(self):
        """One advertising interval: every discovering adapter hears every advertiser in range."""
        self.tick += 1
        for la in self.adapters:
            if not (la.discovering and la.powered()):
                continue
            for pa in self.adapters:
                if not (pa.adv and pa.powered() and self.in_range(la.index, pa.index)):
                    continue
                _, _, uuids, mdata = pa.adv
                if la.filter_uuids and not set(la.filter_uuids) & set(uuids):
                    continue
                dev = self.device(la.index, pa.index)
                dev.update(DEVICE, {
                    "RSSI": dbus.Int16(self.rssi(la.index, pa.index)),
                    "UUIDs": dbus.Array(uuids, signature="s"),
                    "ManufacturerData": dbus.Dictionary(
                        {dbus.UInt16(k): dbus.Array(v, signature="y") for k, v in mdata.items()},
                        signature="qv"),
                })
        return True

    def connect(self, a, b):
        la, pa = self.adapters[a], self.adapters[b]
        if not (la.powered() and pa.powered()):
            return "Not Ready"
        if not self.in_range(a, b):
            return "le-connection-abort-by-local"
        if self.connected(a, b):
            return None
        self.links.add(frozenset((a, b)))
        for local, peer in ((a, b), (b, a)):
            dev = self.device(local, peer)
            dev.update(DEVICE, {"Connected": dbus.Boolean(True)})
            self.mirror_gatt(dev)
            dev.update(DEVICE, {"ServicesResolved": dbus.Boolean(True)})
        return None

    def mirror_gatt(self, dev):
        """Remote GATT objects under `dev` for the peer's registered application."""
        app = self.adapters[dev.peer].app
        if not app:
            return
        spath = dev.path + "/service0001"
        uuids = sorted(app[1])
        service_uuid = app[2]
        dev.gatt.append(Service(self, spath, {GATT_SERVICE: {
            "UUID": dbus.String(service_uuid or "00000000-0000-0000-0000-000000000000"),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(dev.path),
            "Includes": dbus.Array([], signature="o"),
        }}))
        for i, uuid in enumerate(uuids):
            flags = app[1][uuid][1]
            cpath = "%s/char%04x" % (spath, i + 2)
            dev.gatt.append(Char(self, cpath, {GATT_CHAR: {
                "UUID": dbus.String(uuid),
                "Service": dbus.ObjectPath(spath),
                "Flags": dbus.Array(flags, signature="s"),
                "Notifying": dbus.Boolean(False),
                "MTU": dbus.UInt16(self.mtu),
                "Value": dbus.Array([], signature="y"),
            }}, dev, uuid))

    def disconnect(self, a, b):
        if not self.connected(a, b):
            return
        self.links.discard(frozenset((a, b)))
        for local, peer in ((a, b), (b, a)):
            dev = self.adapters[local].devices.get(peer)
            if dev is None:
                continue
            for obj in reversed(dev.gatt):
                obj.remove()
            dev.gatt = []
            dev.subscribed = set()
            dev.update(DEVICE, {"ServicesResolved": dbus.Boolean(False), "Connected": dbus.Boolean(False)})

    def app_value_changed(self, iface, changed, invalidated, path=None, sender=None):
        """A local characteristic's Value changed: notify every subscribed connected peer."""
        if iface != GATT_CHAR or "Value" not in changed:
            return
        value = bytes(bytearray(changed["Value"]))[:MAX_VALUE]
        for owner in self.adapters:
            if not owner.app or owner.app[0] != sender:
                continue
            uuid = next((u for u, (p, _) in owner.app[1].items() if p == path), None)
            if uuid is None:
                continue
            for peer in self.adapters:
                if not self.connected(owner.index, peer.index):
                    continue
                dev = peer.devices.get(owner.index)
                if dev is None or uuid not in dev.subscribed:
                    continue
                for obj in dev.gatt:
                    if isinstance(obj, Char) and obj.uuid == uuid:
                        obj.update(GATT_CHAR, {"Value": ay(value)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", type=int, default=2)
    ap.add_argument("--out-of-range", action="append", default=[],
                    help="a pair of adapter indices that do not hear each other, e.g. 0-2")
    ap.add_argument("--mtu", type=int, default=247)
    ap.add_argument("--interval-ms", type=int, default=200)
    args = ap.parse_args()
    pairs = [tuple(int(x) for x in p.split("-")) for p in args.out_of_range]

    tmp = tempfile.mkdtemp(prefix="bluez-standin-")
    sock = os.path.join(tmp, "system_bus_socket")
    conf = os.path.join(tmp, "bus.conf")
    with open(conf, "w") as f:
        f.write(BUS_CONFIG.format(path=sock))
    daemon = subprocess.Popen(["dbus-daemon", "--config-file=" + conf, "--nofork", "--print-address"],
                              stdout=subprocess.PIPE, text=True)
    address = daemon.stdout.readline().strip()
    if not address:
        sys.exit("dbus-daemon did not start")

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    name = dbus.service.BusName(BLUEZ, bus)
    World(bus, args.adapters, pairs, args.mtu, args.interval_ms)
    loop = GLib.MainLoop()

    def stop(*_):
        loop.quit()
        return False

    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                      lambda fd, cond: stop() if not os.read(fd, 4096) else True)
    signal.signal(signal.SIGTERM, lambda *_: GLib.idle_add(stop))
    print("DBUS_SYSTEM_BUS_ADDRESS=" + address, flush=True)
    try:
        loop.run()
    finally:
        del name
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
