"""Management service v1: device registry, online state and health, over MQTT 5."""
