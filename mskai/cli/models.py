"""`mskai models list | install`."""

from __future__ import annotations


def cmd_models_list(args):
    from mskai.models.registry import bundled_dir, list_models, user_dir

    models = list_models()
    for m in models:
        demo = "  [demo, synthetic training data]" if m.metadata["demo"] else ""
        print(f"{m.id}@{m.version}  {m.metadata['task']}  {m.source}{demo}")
    if not models:
        print(f"No models in {user_dir()} or {bundled_dir()}")
    return 0


def cmd_models_install(args):
    from mskai.models.registry import install_model

    package = install_model(args.source, sha256=args.sha256)
    print(f"Installed {package.id}@{package.version} into {package.source}")
    return 0


def add_commands(top):
    """`mskai models ...`"""
    models = top.add_parser("models", help="list and install model packages").add_subparsers(dest="models_command",
                                                                                             required=True)
    p = models.add_parser("list", help="bundled and user-installed models")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("install", help="install a package folder, .zip, or http(s) URL into the user models folder")
    p.add_argument("source")
    p.add_argument("--sha256", help="expected sha256: of the file for a URL (required) or a .zip, of the weights "
                                    "file for a package folder")
    p.set_defaults(func=cmd_models_install)

