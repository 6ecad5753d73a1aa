# examples/plugin/ is a separate, installable project (a cnncheck plugin with its own models): it is
# checked with the plugin loaded (see its README), not as part of this folder's examples.
collect_ignore = ["plugin"]
