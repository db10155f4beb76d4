"""Acme Analytics sales line: know the campaign from caller ID, qualify the lead (company
size, budget, timeline), record the answers, book a call back, put hot leads through."""
