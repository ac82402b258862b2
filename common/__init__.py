"""The bottom layer every package may import: settings, operations endpoints, the QoE
math and concurrent viewers. It imports nothing of the project's other packages."""
