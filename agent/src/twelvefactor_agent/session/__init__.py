"""The MQTT sessions: connection machine, paho thread, management and solution sessions."""
