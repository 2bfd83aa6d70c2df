"""Adapters from other frameworks to cudcn (installed as ``cudcn.adapters``)."""
