# A stand-in for the app: says hello with its arguments and instance, then exits.
import os, sys
print('hello', *sys.argv[1:], 'instance', os.environ.get('NODE_APP_INSTANCE'), 'port', os.environ.get('PORT'), flush=True)
