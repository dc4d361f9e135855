"""twistd plugin: ``twistd -n chatserver --port 4001``."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _ChatServerServiceMaker:
    tapname = "chatserver"
    description = "A WebSocket chat server speaking node-chat-server's protocol."

    @property
    def options(self) -> type:
        from chatserver.options import CommandLineOptions

        return CommandLineOptions

    def makeService(self, options: object) -> object:
        from chatserver.tap import make_service_or_exit

        return make_service_or_exit(options)


serviceMaker = _ChatServerServiceMaker()
