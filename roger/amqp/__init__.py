"""Talking AMQP: connections, names and declarations, publishing, RPC, frame I/O.

Library code for every process of a node and for producers. kombu,
py-amqp and socket exceptions are handled here.
"""
