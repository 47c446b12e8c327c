"""The host side of the device layer: one way to reach a device, and the on-device code it ships."""
