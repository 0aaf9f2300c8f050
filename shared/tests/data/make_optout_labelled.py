#!/usr/bin/env python3
"""Writes optout_labelled.tsv: messages labelled opt_out, opt_in or none (ordinary replies, many
of them close to a keyword), for tests/optout_accuracy.rs. The labels are ours, written by hand
below; variants only change case, spacing and punctuation.
Run: python3 make_optout_labelled.py > optout_labelled.tsv"""
import random
random.seed(7)
out_kw = ["STOP","Stop","stop.","STOP!","Stop please","please stop","STOPALL","Unsubscribe","unsubscribe","CANCEL","Cancel","END","end","QUIT","Quit!","REVOKE","OPT OUT","opt-out","Optout",
          "BAJA","Baja","¡Baja!","darme de baja","PARAR","Parar","ALTO","Alto!","DETENER","detener","CANCELAR","Cancelar","Basta","basta!","No más","NO MAS","Para!",
          "SAIR","Sair","PARE","Pare.","Chega","CHEGA!","Descadastrar","REMOVER","cancelar inscrição","Cancelar suscripción"]
out_phr = ["Please stop texting me","stop texting me!!","STOP TEXTING ME","Stop messaging me about the rent","can you stop sending me these","Stop sending me messages","stop sending texts to this number","Stop contacting me","Don't text me again","dont text me anymore","Do not text me","do not contact me again","Don’t message me","No more texts please","no more messages","Unsubscribe me from this list","remove me from your list","Take me off this list","opt me out","I want to opt out","stop the texts please","Stop all messages","stop text me",
           "No me manden más mensajes","no me manden mas mensajes por favor","No me envíen más mensajes","no me escriban más","Dejen de enviarme mensajes","dejen de mandarme textos","Dejen de escribirme","Deje de enviarme esto","Quiero darme de baja","quiero darme de baja de esta lista","No quiero más mensajes","no quiero recibir más mensajes","No quiero recibir mensajes de ustedes","Bórrenme de su lista","quítenme de la lista","Eliminen mi número","No me contacten más","no más mensajes gracias","No quiero que me escriban","por favor no me mande más","no me envíe más mensajes",
           "Não quero mais receber mensagens","nao quero mais receber sms","Não quero receber mais mensagens","não quero receber mensagens","Parem de me enviar mensagens","parem de enviar isso","Parem de mandar mensagem","parem de me mandar mensagens","Pare de me enviar mensagens","pare de me mandar sms","Pare de enviar mensagens","pare de mandar mensagens por favor","Não me enviem mais nada","não me mandem mais mensagens","Quero sair da lista","me tirem da lista por favor","Me remova da lista","me removam desse contato","Parem com as mensagens","não me mande mais isso","Não quero mais mensagens"]
in_kw = ["START","Start","start.","UNSTOP","unstop","YES","Yes!","yes","SUBSCRIBE","ALTA","Alta","Reanudar","Comenzar","Sí","SI","si","Iniciar","INICIAR","Voltar","Reativar","Sim","SIM!","Assinar","suscribir"]
none = ["no","No","NO","no.","No!","nope","ok","OK thanks","thanks","Gracias","Obrigado","obrigada!","HELP","help","INFO",
 "pare de cobrar","Pare de cobrar juros","parem de cobrar taxa","Pare de me cobrar multa","para cuando es el pago","Para mañana","para el lunes",
 "Can you stop by the office?","I can't stop the leak","the water won't stop running","Stop the technician from coming today, I'm not home","The noise doesn't stop at night","when does the construction stop",
 "Cancel my appointment for Monday","cancel the maintenance visit","Please cancel the late fee","I want to cancel the repair","End of the month I will pay","at the end of the week","the end",
 "No puedo pagar hoy","no tengo dinero","No, gracias, ya pagué","no me llegó el recibo","No me funciona la calefacción","No me dejan entrar al edificio","Dejen de hacer ruido en la noche","Deje la llave en la oficina",
 "Não posso pagar agora","não consegui entrar","Não me mandaram o boleto","não recebi a mensagem anterior","Quero sair do apartamento no fim do mês","vou sair mais cedo hoje","Pode parar o vazamento?","o vazamento não para","Pare o carro na vaga 12","Sair do contrato quanto custa?",
 "alto el ruido del vecino","el agua sale muy alta","Baja presión de agua","la renta es muy alta","El calentador está en baja",
 "stop","Start the repair tomorrow please","Yes I paid","sí ya pagué","Sim, já paguei","si mañana","Yes, tomorrow at 9 works",
"STOP charging me twice","please stop the water shutoff","I will stop by tomorrow","stop sign is broken in the lot",
 "I don't want to receive a late fee","No quiero pagar el recargo","Não quero pagar a multa","no more hot water","No more problems with the sink, thanks",
 "remove the old fridge from my unit","take me off autopay","Quiero darme de alta en el portal","end the lease early?","Quit smoking sign in the lobby",
 "unsubscribe from what? I never signed up for anything else","send me the receipt","Manden el recibo por favor","me mandem o boleto","mande mas información","Enviem o técnico amanhã",
 "voltar amanhã","quero voltar a pagar em dia","Iniciar el contrato en enero","comenzar mañana la obra","Alta calidad","Reanudar el pago automático?",
 "¿Hola?","Hello","Hi, is this the office?","Who is this?","Buenos días","Bom dia","Ok","Perfecto","Perfeito","Thank you!","De acuerdo","Combinado",
 "The rent is due on the 1st?","¿Cuándo vence la renta?","Quando vence o aluguel?","Gracias por avisar","Valeu","Sure","yep","Listo","Pronto"]
# variants: add some casing/punctuation variants
rows=[]
def add(text,label): rows.append((text,label))
for t in out_kw+out_phr: add(t,"opt_out")
for t in in_kw: add(t,"opt_in")
# "stop" alone appears in none list by mistake? ensure correct labels
none=[t for t in none if t!="stop"]
for t in none: add(t,"none")
# extra variants of positives and negatives with punctuation/case
extra=[]
for t,l in list(rows):
    if random.random()<0.35:
        v=random.choice([t.upper(), t.lower(), t+"!", "  "+t+"  ", t+"."])
        extra.append((v,l))
rows+=extra
seen=set(); final=[]
for t,l in rows:
    if t in seen: continue
    seen.add(t); final.append((t,l))
import json
print("text\tlabel")
for t,l in final: print(json.dumps(t,ensure_ascii=False)+"\t"+l)
import sys; print(len(final), sum(1 for _,l in final if l=='opt_out'), sum(1 for _,l in final if l=='opt_in'), sum(1 for _,l in final if l=='none'), file=sys.stderr)
