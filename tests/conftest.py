pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.smtp",
    "tests.fixtures.kubernaut",
    "tests.fixtures.devstack",
    "tests.fixtures.cluster",
]
