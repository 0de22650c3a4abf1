"""BIOS over Redfish: the client that applies a vendor table's phase (`python -m components.bmc.redfish
apply`, run by the BiosSettings component as a local command with the BMC credentials in its
environment) and the pure attribute resolution against the BMC's AttributeRegistry."""
