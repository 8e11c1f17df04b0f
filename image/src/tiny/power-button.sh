#!/bin/sh
# ACPI power button (QMP system_powerdown): shut down cleanly.
poweroff
