#!/usr/bin/python3
"""Hostile GATT writes into an ecomesh BlueZ backend over the stand-in BlueZ's bus.

Usage: hostile.py BUS_ADDRESS ADAPTER PEER_ADDRESS

Calls `WriteValue` directly on the application's characteristics that the backend
registered on ADAPTER (found through the stand-in's test-only `org.ecomesh.Standin1.App`),
as BlueZ would, but with garbage: an offset, an oversized value, mistyped or missing
options, writes for no connection, random bytes, a reassembly flood from a device
without our service, and a reassembly flood on the established link with PEER_ADDRESS
(a spoofed device path). Prints one JSON
object per case: {"case": name, "result": "ok" or the D-Bus error name}.
"""
import json
import random
import sys

import dbus

GATT_CHAR = "org.bluez.GattCharacteristic1"
WRITE = "6c9e4c1a-3b5f-4f2e-9d0a-7e21b4c8e002"
NOTIFY = "6c9e4c1a-3b5f-4f2e-9d0a-7e21b4c8e003"


def main():
    address, adapter, peer = sys.argv[1:4]
    bus = dbus.bus.BusConnection(address)
    owner, chars = bus.get_object("org.bluez", "/org/bluez/" + adapter).App(
        dbus_interface="org.ecomesh.Standin1")
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)

    def path_of(addr):
        return "/org/bluez/%s/dev_%s" % (adapter, addr.replace(":", "_"))

    def opts(addr, **kw):
        o = {"device": dbus.ObjectPath(path_of(addr)), "mtu": dbus.UInt16(247),
             "type": dbus.String("command"), "link": dbus.String("LE")}
        for k, v in kw.items():
            if v is None:
                o.pop(k, None)
            else:
                o[k] = v
        return dbus.Dictionary(o, signature="sv")

    def write(uuid, value, options):
        obj = bus.get_object(owner, chars[uuid], introspect=False)
        try:
            obj.WriteValue(dbus.Array(bytes(value), signature="y"), options,
                           dbus_interface=GATT_CHAR, timeout=10)
            return "ok"
        except dbus.DBusException as e:
            return e.get_dbus_name()

    def report(case, result):
        print(json.dumps({"case": case, "result": result}), flush=True)

    stranger = "66:66:66:66:66:01"
    # Refused at the D-Bus boundary, before the engine.
    report("offset", write(WRITE, [1, 0, 1, 0], opts(stranger, offset=dbus.UInt16(3))))
    report("oversized", write(WRITE, [2] * 600, opts(stranger)))
    report("mtu_as_string", write(WRITE, [1], opts(stranger, mtu=dbus.String("big"))))
    report("no_mtu", write(WRITE, [1], opts(stranger, mtu=None)))
    report("device_not_a_device", write(WRITE, [1], opts(stranger, device=dbus.ObjectPath("/x"))))
    report("offset_as_bytes", write(WRITE, [1], opts(stranger, offset=dbus.Array([1], signature="y"))))
    report("type_unknown", write(WRITE, [1], opts(stranger, type=dbus.String("bogus"))))
    report("notify_without_connection", write(NOTIFY, [3, 1], opts(stranger)))
    # Accepted by D-Bus, refused by the engine (its link is closed, the address backs off).
    results = set()
    for i in range(64):
        n = rng.randint(1, 244)
        results.add(write(WRITE, [rng.randrange(4, 256)] + [rng.randrange(256) for _ in range(n - 1)],
                          opts("66:66:66:66:66:%02X" % (0x10 + i % 8))))
    report("random_bytes", ",".join(sorted(results)))
    flood = "66:66:66:66:66:20"
    results = {write(WRITE, [0x01, 0x10, 0x00, 0xAA], opts(flood))}
    for _ in range(400):
        results.add(write(WRITE, [0x02, 0xBB], opts(flood)))
    report("fragment_flood", ",".join(sorted(results)))
    # A reassembly flood on the established link with the peer: on whichever
    # characteristic carries it (ours if it dialled us, the second one if we dialled it).
    for name, uuid in (("peer_flood_write", WRITE), ("peer_flood_notify", NOTIFY)):
        results = {write(uuid, [0x01, 0x10, 0x00, 0xAA], opts(peer))}
        for _ in range(300):
            results.add(write(uuid, [0x02, 0xBB], opts(peer)))
        report(name, ",".join(sorted(results)))


if __name__ == "__main__":
    main()
