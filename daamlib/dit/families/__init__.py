"""One module per traced transformer family, each declaring its ``FAMILY`` (:class:`daamlib.dit.registry.Family`)
and the template helpers only it needs. They are imported lazily, through
:data:`daamlib.dit.registry.FAMILY_MODULES`; none imports another."""
