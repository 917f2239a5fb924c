"""Outputs of the service: MQTT (topics, durable outbox, the one communicator), the GPIO
buzzer and systemd's sd_notify. Each adapter depends on its own library only; hardware
libraries are imported lazily inside their backend.
"""
