"""Sessions: ownership of actuators, expiry where the actuator lives, the management API."""
