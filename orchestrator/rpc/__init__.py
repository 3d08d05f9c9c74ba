"""Calls to resources: request/response over MQTT with correlation ids and deadlines."""
