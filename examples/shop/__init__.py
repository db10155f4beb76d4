"""Northwind Home (a web shop): order status by number or caller ID, address changes before
shipping, returns FAQ, billing disputes to staff."""
