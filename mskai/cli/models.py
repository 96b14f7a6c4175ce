"""`mskai models list | install | use`."""

from __future__ import annotations


def cmd_models_list(args):
    from mskai.models.registry import bundled_dir, list_models, local_summary, resolve_model, user_dir

    models = list_models()
    defaults = {}
    for m in models:
        if m.id not in defaults:
            defaults[m.id] = resolve_model(m.id, m.metadata["task"]).version
        demo = "  [demo, synthetic training data]" if m.metadata["demo"] else ""
        default = "  (default)" if defaults[m.id] == m.version else ""
        print(f"{m.id}@{m.version}  {m.metadata['task']}  {m.source}{demo}{default}")
        if "local" in m.metadata:
            print(f"    {local_summary(m.metadata['local'])}")
    if not models:
        print(f"No models in {user_dir()} or {bundled_dir()}")
    return 0


def cmd_models_use(args):
    from mskai.models.registry import find_model, set_default, shipped_version

    model_id, _, version = args.model.partition("@")
    if args.shipped:
        version = shipped_version(model_id)
    elif not version:
        set_default(model_id, None)
        print(f"{model_id}: the newest version that is not kept aside ({find_model(model_id).version}) is the default")
        return 0
    package = find_model(f"{model_id}@{version}")
    set_default(package.id, package.version)
    print(f"{package.id}@{package.version} is now the default")
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
    p = models.add_parser("use", help="the version used when a model is named without one (e.g. a local fine-tune)")
    p.add_argument("model", help="id@version; a bare id: the newest again")
    p.add_argument("--shipped", action="store_true", help="back to the version shipped with the extension")
    p.set_defaults(func=cmd_models_use)

