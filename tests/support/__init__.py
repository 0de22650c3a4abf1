"""Support code for the tests: servers, stand-ins and builders the test modules share."""
