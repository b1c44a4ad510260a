"""`fab` in this repository: fabship's tasks (tasks/cli/namespace.py, the same the
`fabship` command runs) plus the sandbox's, which are developer tooling and not
in the installed package."""
from tasks.cli.namespace import collection
from tasks.sandbox.tasks import ns as sandbox_ns

ns = collection()
ns.add_collection(sandbox_ns)
